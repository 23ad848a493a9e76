"""MLflow set-up shared by every stage: one tracking store, telemetry off.

Embedded default: a SQLite store `mlflow.db` and artifacts under `mlartifacts/` in the project
folder. `MLFLOW_TRACKING_URI` (e.g. the docker-compose server) overrides it.
"""

from __future__ import annotations

import os

from medsql import paths

for _var, _value in (("MLFLOW_ENABLE_TELEMETRY", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                     ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_var, _value)

DEFAULT_EXPERIMENT = "medsql"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.ROOT / 'mlflow.db'}"


def configure(experiment: str | None = None) -> str:
    """Point MLflow at the project's store and select the experiment; returns the tracking URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(name) is None:
        # Local store: keep artifacts beside the database, not in ./mlruns of whatever cwd.
        mlflow.create_experiment(name, artifact_location=(paths.ROOT / "mlartifacts").as_uri())
    mlflow.set_experiment(name)
    return uri
