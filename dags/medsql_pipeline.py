"""medsql_pipeline: the DVC stages of medsql as an Airflow DAG; the logic stays in the medsql package.

The tasks and their edges are dvc.yaml's stages and graph (read by medsql/pipeline.py: B waits for
A when B depends on something A writes), so `dvc dag` and this DAG cannot disagree; independent
branches such as build_suite and train may run side by side. Each stage task runs
`dvc repro --single-item <stage>` in the project checkout, so DVC skips a stage whose inputs are
unchanged and dvc.lock records what ran. Trigger with a configuration such as
{"train": {"epochs": 2}} to override params.yaml for this run only: see medsql/overrides.py.

Parallel stages share the checkout and DVC's repository lock. DVC holds that lock while it checks
and records a stage, not while the stage's command runs; a second `dvc repro` that finds it taken
retries for 3 seconds and then fails ("Unable to acquire lock"). The tasks therefore call
`dvc --wait-for-lock repro`, which waits for it instead. Two stages that run at once never touch
the same path (if one read what the other writes, the graph would order them), so DVC's per-path
locks never refuse them.

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
from airflow.sdk import DAG

PROJECT_DIR = os.environ.get("MEDSQL_PROJECT_DIR") or str(Path(__file__).resolve().parent.parent)
if PROJECT_DIR not in sys.path:  # the checkout's own medsql, as the tasks run it (compose mounts it, uninstalled)
    sys.path.insert(0, PROJECT_DIR)
from medsql.pipeline import load_pipeline  # noqa: E402  (stdlib and yaml only: parsing stays fast)

BIN = os.environ.get("MEDSQL_BIN") or str(Path(sys.executable).parent)
GPU_QUEUE = "gpu"   # served by the GPU Celery worker in docker-compose.yaml
GPU_POOL = "gpu"    # size 1: one training job at a time on the GPU (created by `make airflow` / compose)
GPU_STAGES = {"train"}
VALIDATION_REPORT = "reports/validation"  # GX data docs site, written by the validate stage

PIPELINE = load_pipeline(Path(PROJECT_DIR) / "dvc.yaml")
# Retries are orchestration policy, by dvc.yaml stage name (tests/test_dag.py checks that every stage
# has one; a stage missing here gets none). Retries where a second try can succeed: tasks that depend
# on services or resources (MLflow, the GPU worker's memory, an optional hub download for ingest).
# Local deterministic transforms would fail the same way again, and a failed validation is a verdict
# on the data: it fails the run at once.
RETRIES = {"build_db": 0, "ingest": 2, "validate": 0, "preprocess": 0, "train": 1, "build_suite": 0,
           "evaluate": 2, "analyze_errors": 0, "register": 3}

# Every task sees the run's configuration and id (templated at run time).
RUN_ENV = {"MEDSQL_OVERRIDES": "{{ dag_run.conf | tojson }}", "MEDSQL_RUN_ID": "{{ run_id }}"}


def _stage_command(stage: str) -> str:
    command = f"dvc --wait-for-lock repro --single-item {shlex.quote(stage)}"
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
    max_active_runs=1,  # runs share one checkout and params.yaml (stages of one run: see the docstring)
    tags=["medsql", "dvc", "mlflow"],
    doc_md=__doc__,
    default_args={
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
) as dag:
    apply_overrides = _bash("apply_overrides", "python -m medsql.overrides apply").as_setup()
    stages = {
        stage: _bash(stage, _stage_command(stage), retries=RETRIES.get(stage, 0),
                     **({"queue": GPU_QUEUE, "pool": GPU_POOL} if stage in GPU_STAGES else {}))
        for stage in PIPELINE.stages
    }
    for stage, task in stages.items():
        task.set_upstream([stages[before] for before in PIPELINE.upstream(stage)] or apply_overrides)
    record_experiment = _bash("record_experiment", "python -m medsql.overrides record", retries=2)
    record_experiment.set_upstream([stages[stage] for stage in PIPELINE.leaves()])
    # A teardown runs whatever happened upstream; the run's state still follows the stage tasks.
    restore_params = _bash("restore_params", "python -m medsql.overrides restore").as_teardown(
        setups=apply_overrides)
    record_experiment >> restore_params
