#!/usr/bin/env bash
# `make airflow`: Airflow standalone on 127.0.0.1 with the medsql DAG, sized for a small machine.
#
# Environment (all optional): AIRFLOW_HOME (default ./airflow_home), AIRFLOW_PORT (default 8080),
# AIRFLOW__CORE__PARALLELISM (default 2: the DAG runs one stage at a time; Airflow's default of
# 32 starts 32 worker processes, about 5.6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$PWD
if [[ -x $PROJECT/.venv/bin/airflow ]]; then
  export PATH="$PROJECT/.venv/bin:$PATH"   # the tasks run `dvc` and `python` from this PATH
fi

PORT=${AIRFLOW_PORT:-8080}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$PROJECT/airflow_home}
export AIRFLOW__CORE__DAGS_FOLDER=$PROJECT/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False   # schedule=None: it runs only when triggered
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-2}
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$PORT
export AIRFLOW__API__BASE_URL=http://127.0.0.1:$PORT
export AIRFLOW__API__WORKERS=1
export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1
export MLFLOW_ENABLE_TELEMETRY=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
mkdir -p "$AIRFLOW_HOME"

airflow db migrate >/dev/null
# Training waits for the single slot of this pool (on Celery it also goes to the `gpu` queue).
airflow pools set gpu 1 "medsql training: one job at a time on the GPU" >/dev/null

# Print how to log in once the API answers; Airflow itself runs in the foreground (Ctrl-C stops it).
password_file=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated
(
  for _ in $(seq 300); do
    kill -0 $$ 2>/dev/null || exit 0
    if [[ -s $password_file ]] && curl -fs "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null 2>&1; then
      password=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$password_file")
      printf '\n  medsql: Airflow is up at http://127.0.0.1:%s\n' "$PORT"
      printf '  log in as admin, password %s (kept in %s)\n' "$password" "$password_file"
      printf '  DAG medsql_pipeline: Trigger; the form sets epochs, learning rate, profile, evaluation limit, other params.\n'
      printf '  Runs start from the last commit of %s (workspaces in %s).\n' "$PROJECT" "$AIRFLOW_HOME/medsql-workspaces"
      printf '  Ctrl-C stops Airflow.\n\n'
      exit 0
    fi
    sleep 1
  done
) &
exec airflow standalone
