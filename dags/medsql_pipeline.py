"""medsql_pipeline: the DVC stages of medsql as an Airflow DAG; the logic stays in the medsql package.

Each stage task runs `dvc repro --single-item <stage>` in the project checkout, so DVC skips a
stage whose inputs are unchanged and dvc.lock records what ran. The stages share the checkout and
DVC's repository lock, so they run one after another. Trigger with a configuration such as
{"train": {"epochs": 2}} to override params.yaml for this run only: see medsql/overrides.py.

The project checkout is $MEDSQL_PROJECT_DIR (docker-compose sets it), else this file's parent's
parent. Tasks run `dvc` and `python` from the Python environment that runs Airflow ($MEDSQL_BIN to
choose another bin folder), put first on PATH by the command itself: Airflow 3 hands a task's
processes a socket as stdin, and Debian's bash then reads ~/.bashrc even for `bash -c`, where a
pyenv or conda set-up would put another Python first. The stages get /dev/null as stdin, so the
shells DVC starts for them keep that PATH.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, chain

PROJECT_DIR = os.environ.get("MEDSQL_PROJECT_DIR") or str(Path(__file__).resolve().parent.parent)
BIN = os.environ.get("MEDSQL_BIN") or str(Path(sys.executable).parent)
GPU_QUEUE = "gpu"   # served by the GPU Celery worker in docker-compose.yaml
GPU_POOL = "gpu"    # size 1: one training job at a time on the GPU (created by `make airflow` / compose)
VALIDATION_REPORT = "reports/validation"  # GX data docs site, written by the validate stage

STAGES = ["build_db", "ingest", "validate", "preprocess", "train", "build_suite", "evaluate",
          "analyze_errors", "register"]
# Retries where a second try can succeed: tasks that depend on services or resources (MLflow,
# the GPU worker's memory, an optional hub download for ingest). Local deterministic transforms
# would fail the same way again, and a failed validation is a verdict on the data: it fails the
# run at once.
RETRIES = {"build_db": 0, "ingest": 2, "validate": 0, "preprocess": 0, "train": 1, "build_suite": 0,
           "evaluate": 2, "analyze_errors": 0, "register": 3}

# Every task sees the run's configuration and id (templated at run time).
RUN_ENV = {"MEDSQL_OVERRIDES": "{{ dag_run.conf | tojson }}", "MEDSQL_RUN_ID": "{{ run_id }}"}


def _stage_command(stage: str) -> str:
    command = f"dvc repro --single-item {shlex.quote(stage)}"
    if stage == "validate":  # the verdict's details are in the data docs: say where, then fail
        report = shlex.quote(f"{PROJECT_DIR}/{VALIDATION_REPORT}/index.html")
        command += f" || {{ s=$?; echo Data validation failed, data docs report: {report}; exit $s; }}"
    return command


def _bash(task_id: str, command: str, **kwargs) -> BashOperator:
    return BashOperator(
        task_id=task_id,
        bash_command=f'export PATH={shlex.quote(BIN)}:"$PATH"; exec </dev/null; {command}',
        cwd=PROJECT_DIR,
        env=RUN_ENV,
        append_env=True,
        skip_on_exit_code=None,  # exit 99 from a stage is a failure, not a skip
        **kwargs,
    )


with DAG(
    dag_id="medsql_pipeline",
    description="MIMICSQL text-to-SQL: data -> validation -> fine-tuning -> evaluation -> registry",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs share one checkout, params.yaml and DVC lock
    tags=["medsql", "dvc", "mlflow"],
    doc_md=__doc__,
    default_args={
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
) as dag:
    apply_overrides = _bash("apply_overrides", "python -m medsql.overrides apply").as_setup()
    stages = [
        _bash(stage, _stage_command(stage), retries=RETRIES[stage],
              **({"queue": GPU_QUEUE, "pool": GPU_POOL} if stage == "train" else {}))
        for stage in STAGES
    ]
    record_experiment = _bash("record_experiment", "python -m medsql.overrides record", retries=2)
    # A teardown runs whatever happened upstream; the run's state still follows the stage tasks.
    restore_params = _bash("restore_params", "python -m medsql.overrides restore").as_teardown(
        setups=apply_overrides)
    chain(apply_overrides, *stages, record_experiment, restore_params)
