"""MLflow set-up shared by every stage: one tracking store, telemetry off, bounded waits.

Embedded default: a SQLite store `mlflow.db` and artifacts under `mlartifacts/` in the project
folder. `MLFLOW_TRACKING_URI` (e.g. the docker-compose server) overrides it.

Two ways in, for two kinds of caller:

- `configure(experiment)`: for writers (training, sweeps, the Airflow run record). Points MLflow
  at the store and selects (creating if needed) the experiment runs are logged into.
- `use_store()`: for readers (loading `models:/medsql@champion`, the registry commands). Points
  MLflow at the store and nothing else: resolving a model never creates an experiment, and a
  local store that does not exist (or holds no tables yet) is reported, not created.

Talking to a tracking server is bounded by MLflow's own settings, which medsql gives short
defaults when they are unset (`HTTP_DEFAULTS`): MLflow's defaults (120 s per request, 7 retries
with exponential backoff) make a client wait about 4 minutes for a server that is down. Failures
come back as `TrackingError` with a message naming the URI (`failure()`), never a traceback.

Credentials for a server with basic authentication are MLflow's MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD; where they are kept in files (Docker secrets), MLFLOW_TRACKING_USERNAME_FILE
and MLFLOW_TRACKING_PASSWORD_FILE name the files, read by this process only (`load_credentials()`).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from pathlib import Path

from medsql import paths

log = logging.getLogger(__name__)

for _var, _value in (("MLFLOW_ENABLE_TELEMETRY", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                     ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_var, _value)

# MLflow's own environment settings, with medsql's defaults where the environment has none.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",         # seconds per request (connect, and each read)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",      # retries after the first try
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",   # waits 0 s, then 2 s (+ up to 1 s jitter) between tries
}
for _var, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_var, _value)

DEFAULT_EXPERIMENT = "medsql"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


class TrackingError(RuntimeError):
    """The tracking store cannot be used: unreachable, refusing us, or absent (the message says which)."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.ROOT / 'mlflow.db'}"


def registry_uri() -> str:
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def load_credentials() -> None:
    """Fill MLFLOW_TRACKING_USERNAME/PASSWORD from the files their *_FILE variables name, if unset."""
    for name in CREDENTIAL_VARIABLES:
        path = os.environ.get(f"{name}_FILE")
        if not path or os.environ.get(name):
            continue
        try:
            os.environ[name] = Path(path).read_text().strip()
        except OSError as err:
            raise TrackingError(f"${name}_FILE={path}: cannot read it ({err.strerror})") from err


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, None for any other store."""
    if not uri.startswith("sqlite:"):
        return None
    return Path(re.sub(r"^sqlite:/*", "/", uri.split("?", 1)[0]))


def has_store(uri: str) -> bool:
    """Whether a local SQLite store exists with MLflow's tables in it (checked without writing)."""
    path = sqlite_path(uri)
    if path is None:
        return True  # a server: asking it is the only way to know
    if not path.is_file():
        return False
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'registered_models'")
            return row.fetchone() is not None
    except sqlite3.Error:
        return False  # not a database MLflow wrote; MLflow itself will say so to a writer


def use_store() -> str:
    """Point MLflow at the project's store for reading; returns the tracking URI. Writes nothing.

    Raises TrackingError when a local store does not exist yet (MLflow would create it).
    """
    import mlflow

    load_credentials()
    uri = tracking_uri()
    if not has_store(uri):
        raise TrackingError(f"no MLflow store at {sqlite_path(uri)} ({uri}): nothing has been logged or "
                            "registered there yet (run the pipeline, or set MLFLOW_TRACKING_URI)")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri())
    return uri


def configure(experiment: str | None = None) -> str:
    """Point MLflow at the project's store and select the experiment; returns the tracking URI.

    For writers only (it creates the experiment when missing): readers use `use_store()`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    load_credentials()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri())
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    try:
        if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(name) is None:
            # Local store: keep artifacts beside the database, not in ./mlruns of whatever cwd (a
            # per-run workspace of the DAG logs into its checkout's store: see medsql/workspace.py).
            mlflow.create_experiment(name, artifact_location=(sqlite_path(uri).parent / "mlartifacts").as_uri())
        mlflow.set_experiment(name)
    except MlflowException as err:
        raise TrackingError(failure(err, uri)) from err
    return uri


# ---- what went wrong -------------------------------------------------------------------------


def is_missing(err: Exception) -> bool:
    """True when MLflow answered that a model, version or alias does not exist (a real answer)."""
    code = getattr(err, "error_code", None)
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # MLflow reports an unknown alias as an invalid parameter: "Registered model alias X not found."
    return code == "INVALID_PARAMETER_VALUE" and "alias" in str(err) and "not found" in str(err)


def unreachable(err: BaseException) -> BaseException | None:
    """The network error (refused, timed out, no such host) behind an MLflow exception, if any."""
    import requests

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def failure(err: Exception, uri: str | None = None) -> str:
    """One line saying what went wrong talking to the store at `uri`, and what to do about it."""
    uri = uri or tracking_uri()
    cause = unreachable(err)
    if cause is not None:
        reason = _network_reason(str(cause))
        return (f"the MLflow tracking server at {uri} is unreachable ({reason}); is it running? "
                f"(MLFLOW_TRACKING_URI; each request waits up to MLFLOW_HTTP_REQUEST_TIMEOUT="
                f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')} s and is retried "
                f"MLFLOW_HTTP_REQUEST_MAX_RETRIES={os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')} times)")
    text = str(err)
    if re.search(r"\b(401|403)\b", text) or getattr(err, "error_code", None) in ("UNAUTHENTICATED",
                                                                                "PERMISSION_DENIED"):
        return (f"the MLflow tracking server at {uri} refused the request (not authenticated or not "
                "permitted): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or their *_FILE "
                "variables) to an account with access")
    return f"MLflow store {uri}: {getattr(err, 'message', text)}"


def _network_reason(text: str) -> str:
    for pattern, reason in ((r"Connection refused", "connection refused"),
                            (r"timed out|Timeout", "timed out"),
                            (r"Name or service not known|nodename nor servname|getaddrinfo failed",
                             "no such host")):
        if re.search(pattern, text):
            return reason
    return text.splitlines()[0][:200] if text else "network error"
