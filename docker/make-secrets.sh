#!/bin/bash
# Create the secret files docker-compose.yaml reads (Docker secrets), each a fresh random value:
#
#   docker/make-secrets.sh ../medsql-secrets     # the folder .env names as MEDSQL_SECRETS_DIR
#
# A file that exists already is kept (re-running never rotates a password a volume has stored).
# The folder is private to you (0700); the files in it are 0644 because the containers read them
# as their own users (postgres, redis, airflow, minio), and only the services that list a secret see it.
# Keep the folder outside the checkout, where no `git add` can put a secret into the history that
# git-init copies to the git remote.
set -euo pipefail
dir=${1:?usage: docker/make-secrets.sh SECRETS_DIR}
mkdir -p "$dir"
chmod 0700 "$dir"

random_hex() { openssl rand -hex 24; }
fernet_key() { openssl rand -base64 32 | tr '+/' '-_'; }   # 32 bytes, url-safe base64: what Fernet takes
s3_key() { openssl rand -hex 20; }                           # 40 characters: MinIO's longest secret key
s3_credentials() {  # an AWS credentials file (what AWS_SHARED_CREDENTIALS_FILE names) for account $1
    printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s' "$1" "$(s3_key)"
}

write() {  # write NAME VALUE: without a trailing newline, unless the file exists
    local path="$dir/$1"
    if [[ -s "$path" ]]; then
        echo "kept    $path"
        return
    fi
    printf '%s' "$2" > "$path"
    chmod 0644 "$path"
    echo "created $path"
}

write postgres_password "$(random_hex)"          # Airflow's metadata database (user airflow)
write mlflow_db_password "$(random_hex)"         # MLflow's backend store (user mlflow)
write redis_password "$(random_hex)"             # the Celery broker
write airflow_fernet_key "$(fernet_key)"         # encrypts Airflow connections and variables
write airflow_jwt_secret "$(random_hex)"         # signs Airflow API tokens
write airflow_api_secret_key "$(random_hex)"     # Airflow API server sessions
write airflow_admin_password "$(random_hex)"     # the Airflow UI login AIRFLOW_ADMIN_USER
write mlflow_admin_password "$(random_hex)"      # MLflow basic auth: the admin account
write mlflow_pipeline_password "$(random_hex)"   # MLflow basic auth: the account the pipeline's tasks use
write mlflow_flask_secret_key "$(random_hex)"    # MLflow server: signs its CSRF tokens (basic auth needs one)
write minio_root_user "$(random_hex)"            # the object store's root account (only minio and minio-init)
write minio_root_password "$(s3_key)"            # ... and its password
write dvc_s3_credentials "$(s3_credentials medsql-pipeline)"  # the DVC remote's account the tasks use
