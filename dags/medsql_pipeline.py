"""medsql_pipeline: the DVC stages of medsql as an Airflow DAG; the logic stays in the medsql package.

The tasks and their edges are dvc.yaml's stages and graph (read by medsql/pipeline.py: B waits for
A when B depends on something A writes), so `dvc dag` and this DAG cannot disagree; independent
branches such as build_suite and train run side by side where workers allow.

Every run works in its own workspaces (medsql/workspace.py), never in a shared checkout:
`start_run` pushes the run branch runs/<run id> (the base commit plus the run's params.yaml) to the
git remote; each stage task runs `dvc repro --single-item <stage>` in a clone of that branch on
whichever worker takes it, pulling its inputs from the DVC remote and pushing its outputs and one
commit (its dvc.lock entry, its metrics) back; `record_experiment` saves the finished run as a DVC
experiment and an MLflow run. Runs share nothing but the git remote, the DVC remote and MLflow, so
several may be active at once; training still runs one at a time (the `gpu` pool).

Trigger with the form's fields (Params with a JSON schema, checked before the run is created): epochs,
learning_rate, profile, limit, and `overrides` for any other params.yaml value, e.g.
{"register": {"margin": 0.02}}. The run uses them; params.yaml on the base commit stays as it is.

Where things are: the code this file and the tasks run is $MEDSQL_PROJECT_DIR (docker-compose sets it),
else this file's parent's parent; the git remote, DVC remote and workspace folder are the
$MEDSQL_GIT_REMOTE, $MEDSQL_DVC_REMOTE and $MEDSQL_WORKSPACES of each worker (defaults: this checkout,
its DVC remote ../medsql-dvc-remote, $AIRFLOW_HOME/medsql-workspaces). Tasks run `dvc` and `python`
from the Python environment that runs Airflow ($MEDSQL_BIN to choose another bin folder), put first on
PATH by the command itself: Airflow 3 hands a task's processes a socket as stdin, and Debian's bash
then reads ~/.bashrc even for `bash -c`, where a pyenv or conda set-up would put another Python first.
The stages get /dev/null as stdin, so the shells DVC starts for them keep that PATH.
"""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

PROJECT_DIR = os.environ.get("MEDSQL_PROJECT_DIR") or str(Path(__file__).resolve().parent.parent)
if PROJECT_DIR not in sys.path:  # the checkout's own medsql, as the tasks run it (compose mounts it, uninstalled)
    sys.path.insert(0, PROJECT_DIR)
from medsql.pipeline import load_pipeline  # noqa: E402  (stdlib and yaml only: parsing stays fast)

BIN = os.environ.get("MEDSQL_BIN") or str(Path(sys.executable).parent)
GPU_QUEUE = "gpu"   # served by the GPU Celery worker in docker-compose.yaml
GPU_POOL = "gpu"    # size 1: one training job at a time on the GPU (created by `make airflow` / compose)
GPU_STAGES = {"train"}
# Runs share no workspace: several may be active (training still queues for the gpu pool's one slot).
MAX_ACTIVE_RUNS = int(os.environ.get("MEDSQL_MAX_ACTIVE_RUNS", "4"))

PIPELINE = load_pipeline(Path(PROJECT_DIR) / "dvc.yaml")
# Retries are orchestration policy, by dvc.yaml stage name (tests/test_dag.py checks that every stage
# has one; a stage missing here gets none). Retries where a second try can succeed: tasks that depend
# on services or resources (MLflow, the GPU worker's memory, an optional hub download for ingest).
# Local deterministic transforms would fail the same way again, and a failed validation is a verdict
# on the data: it fails the run at once.
RETRIES = {"build_db": 0, "ingest": 2, "validate": 0, "preprocess": 0, "train": 1, "build_suite": 0,
           "evaluate": 2, "analyze_errors": 0, "register": 3}

# Every task sees the run's configuration (the form's values) and id, templated at run time.
RUN_ENV = {"MEDSQL_OVERRIDES": "{{ dag_run.conf | tojson }}", "MEDSQL_RUN_ID": "{{ run_id }}"}

# The trigger form: the knobs people change, validated against their JSON schema before the run is
# created (medsql/overrides.py maps them onto params.yaml, where they are checked once more).
PARAMS = {
    "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=1000, title="Epochs",
                    description="Training epochs of the run's profile (empty: params.yaml's)."),
    "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1, title="Learning rate",
                           description="Peak learning rate of the run's profile (empty: params.yaml's)."),
    "profile": Param(None, type=["null", "string"], enum=[None, "embedded", "reference"], title="Profile",
                     description="embedded: T5 from scratch on CPU; reference: FLAN-T5-base + LoRA."),
    "limit": Param(None, type=["null", "integer"], minimum=0, title="Evaluation limit",
                   description="Evaluate on the first N test rows: a smoke run, labelled partial, never gates "
                               "the registry (0 or empty: the whole split)."),
    "overrides": Param({}, type="object", title="Other parameters",
                       description='Any other params.yaml values, nested, e.g. {"register": {"margin": 0.02}}.'),
}


def _workspace(action: str) -> str:
    return f"python -m medsql.workspace {action}"


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
    max_active_runs=MAX_ACTIVE_RUNS,
    params=PARAMS,
    tags=["medsql", "dvc", "mlflow"],
    doc_md=__doc__,
    default_args={
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
) as dag:
    start_run = _bash("start_run", _workspace("start"), retries=2)
    stages = {
        stage: _bash(stage, _workspace(f"stage {shlex.quote(stage)}"), retries=RETRIES.get(stage, 0),
                     **({"queue": GPU_QUEUE, "pool": GPU_POOL} if stage in GPU_STAGES else {}))
        for stage in PIPELINE.stages
    }
    for stage, task in stages.items():
        task.set_upstream([stages[before] for before in PIPELINE.upstream(stage)] or start_run)
    record_experiment = _bash("record_experiment", _workspace("record"), retries=2)
    record_experiment.set_upstream([stages[stage] for stage in PIPELINE.leaves()])
