#!/bin/sh
# One-shot (compose service minio-init, in the minio/mc image): the DVC remote's bucket on the object
# store, and the account the pipeline's tasks use for it, allowed that bucket and nothing else (not the
# root account, whose credentials only minio and this script see). The account's key pair is the one in
# the Docker secret dvc_s3_credentials, the AWS credentials file the workers read
# (AWS_SHARED_CREDENTIALS_FILE). Re-running changes nothing that is there, and resets the account's
# secret key to the file's (rotation: change the file, `docker compose up -d`).
#
#   MEDSQL_DVC_REMOTE           s3://<bucket>/<prefix>: the bucket to create
#   MEDSQL_DVC_REMOTE_ENDPOINT  the object store's URL (http://minio:9000)
#   SECRETS_DIR                 where the secret files are (default /run/secrets)
set -eu
secrets=${SECRETS_DIR:-/run/secrets}
remote=${MEDSQL_DVC_REMOTE:?}
endpoint=${MEDSQL_DVC_REMOTE_ENDPOINT:?}
case $remote in
    s3://?*) ;;
    *) echo "minio-init: MEDSQL_DVC_REMOTE must be s3://<bucket>/..., not $remote" >&2; exit 2 ;;
esac
bucket=${remote#s3://}
bucket=${bucket%%/*}
policy="$bucket-readwrite"

secret() { cat "$secrets/$1"; }   # $(...) drops the trailing newline an editor may have added

# credential KEY: KEY's value in the AWS credentials file (`key = value` lines), read by the shell
# alone: the mc image is a minimal one.
cr=$(printf '\r')
credential() {
    while IFS=' =' read -r key value || [ -n "$key" ]; do
        if [ "$key" = "$1" ]; then
            printf '%s' "${value%"$cr"}"   # a file saved with CRLF line ends
            return 0
        fi
    done < "$secrets/dvc_s3_credentials"
    echo "minio-init: no $1 in the secret dvc_s3_credentials" >&2
    return 1
}
access_key=$(credential aws_access_key_id)
secret_key=$(credential aws_secret_access_key)

mc alias set store "$endpoint" "$(secret minio_root_user)" "$(secret minio_root_password)" >/dev/null
mc mb --ignore-existing "store/$bucket"

umask 077
policy_file="${TMPDIR:-/tmp}/medsql-dvc-policy.json"
cat > "$policy_file" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::$bucket"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$bucket/*"]}
  ]
}
EOF
mc admin policy create store "$policy" "$policy_file"
mc admin user add store "$access_key" "$secret_key" >/dev/null
# Attaching a policy the account has already fails: that is success here.
if ! mc admin policy attach store "$policy" --user "$access_key" >/dev/null 2>&1; then
    case $(mc admin user info store "$access_key") in
        *"$policy"*) ;;
        *) echo "minio-init: could not give $access_key the policy $policy" >&2; exit 1 ;;
    esac
fi
echo "minio-init: bucket $bucket at $endpoint; account $access_key may use it (policy $policy)"
