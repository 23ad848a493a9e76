#!/bin/bash
# First start of the postgres volume: databases and a user for MLflow beside Airflow's metadata:
# `mlflow` (the tracking and registry store). The password comes from a Docker secret file.
set -euo pipefail
mlflow_password=$(cat "${MLFLOW_DB_PASSWORD_FILE:?}")
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v mlflow_password="$mlflow_password" <<'SQL'
CREATE USER mlflow WITH PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
