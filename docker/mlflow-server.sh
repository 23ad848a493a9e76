#!/bin/bash
# Entrypoint of the MLflow tracking server: reads its secrets from Docker secret files into this
# process's environment only (never into the compose file, a command line or other containers),
# then runs the command given (`mlflow server --app-name basic-auth ...`).
#
#   MLFLOW_BACKEND_STORE_URI     postgresql+psycopg2://mlflow:<mlflow_db_password>@postgres/mlflow
#   MLFLOW_AUTH_ADMIN_PASSWORD   the basic-auth admin's password, used when the user store is first created
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the CSRF tokens of the basic-auth app (the same across workers)
set -euo pipefail
secret() { cat "/run/secrets/$1"; }   # $(...) drops the trailing newline an editor may have added
MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow:$(secret mlflow_db_password)@postgres/mlflow"
MLFLOW_AUTH_ADMIN_PASSWORD="$(secret mlflow_admin_password)"
MLFLOW_FLASK_SERVER_SECRET_KEY="$(secret mlflow_flask_secret_key)"
export MLFLOW_BACKEND_STORE_URI MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
exec "$@"
