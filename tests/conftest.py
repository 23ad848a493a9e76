"""Shared pytest fixtures; each part of the project keeps its own in a marked section below."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _restore_mlflow_uri_variables():
    """mlflow.set_tracking_uri / set_registry_uri also write MLFLOW_*_URI into os.environ, beyond
    monkeypatch's reach: put them back after each test, so that no later test (or the DVC and
    Airflow subprocesses it starts) logs or registers into an earlier test's store."""
    saved = {name: os.environ.get(name) for name in MLFLOW_URI_VARIABLES}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ---- ingest / validate (tests/test_ingest.py, tests/test_validate.py) --------------------------


@pytest.fixture(scope="session")
def mimicsql_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MIMICSQL database built by the build_db stage's code from the shared demo CSVs."""
    from medsql import build_db
    from medsql.config import load_config
    from medsql.util import resolve

    out = tmp_path_factory.mktemp("mimicsql_db") / "mimicsql.db"
    build_db.build(resolve(load_config().data.mimic_demo_dir), out)
    return out


# ---- end ingest / validate ---------------------------------------------------------------------


# ---- training / predictor (tests/test_train.py, tests/test_predictor.py) -----------------------

TINY_SHAPE = {"vocab_size": 600, "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 1,
              "num_decoder_layers": 1, "dropout": 0.0}


@pytest.fixture(scope="session")
def real_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The preprocess stage's splits of the real MIMICSQL data (ingested by the ingest stage's code)."""
    import json

    from medsql import ingest, preprocess
    from medsql.config import load_config

    cfg = load_config()
    records = ingest.ingest(cfg.ingest, cfg.data)
    splits = preprocess.preprocess(records, cfg.preprocess)
    out = tmp_path_factory.mktemp("splits")
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="session")
def training_queries(real_splits: Path) -> list[tuple[dict, object]]:
    """The training split's rows whose SQL is inside the grammar, each with its parsed Query."""
    from medsql.sqlform import FormError, parse_sql
    from medsql.util import read_jsonl

    parsed = []
    for row in read_jsonl(real_splits / "train.jsonl"):
        try:
            parsed.append((row, parse_sql(row["sql"])))
        except FormError:
            continue
    return parsed


@pytest.fixture
def tiny_project(tmp_path: Path, real_splits: Path, mimicsql_db: Path, monkeypatch: pytest.MonkeyPatch):
    """A scratch project root with real split files, tiny train params and its own MLflow store.

    Yields (root, params); tests edit params and call `write_params()` via the returned helper.
    """
    import shutil

    import yaml

    from medsql import paths

    params = yaml.safe_load(paths.PARAMS.read_text())  # the project's values, edited below
    params["train"].update(epochs=2, eval_every_epochs=1, per_device_batch_size=8, max_train_rows=48,
                           num_beams=2, max_target_tokens=48, bf16=False)
    params["train"]["embedded"] = dict(TINY_SHAPE)
    (tmp_path / "data").mkdir()
    shutil.copytree(real_splits, tmp_path / "data" / "splits")
    (tmp_path / "data" / "mimicsql.db").symlink_to(mimicsql_db)
    original = paths.ROOT
    paths.set_root(tmp_path)
    monkeypatch.setenv("MEDSQL_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def write_params() -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        monkeypatch.setenv("MEDSQL_PARAMS", str(path))
        return path

    write_params()
    try:
        yield tmp_path, params, write_params
    finally:
        paths.set_root(original)


@pytest.fixture(scope="session")
def briefly_trained_model(tmp_path_factory: pytest.TempPathFactory, real_splits: Path, mimicsql_db: Path) -> Path:
    """A real model from the train stage with the default parameters, stopped after 600 steps
    (about two minutes here): for tests that need a trained model where the pipeline has not
    built one (a fresh clone, CI). It answers simple questions; it is no measure of accuracy."""
    import shutil
    import subprocess
    import sys

    import yaml

    from medsql import paths

    root = tmp_path_factory.mktemp("briefly_trained")
    (root / "data").mkdir()
    shutil.copytree(real_splits, root / "data" / "splits")
    (root / "data" / "mimicsql.db").symlink_to(mimicsql_db)
    params = yaml.safe_load(paths.PARAMS.read_text())
    params["train"].update(max_steps=600, eval_every_epochs=1000, max_wall_minutes=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, MEDSQL_ROOT=str(root), MEDSQL_PARAMS=str(root / "params.yaml"),
               MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, "-m", "medsql.train"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root / "models" / "medsql"


# ---- end training / predictor ------------------------------------------------------------------


# ---- demo (tests/test_demo_api.py, tests/test_demo_browser.py) ---------------------------------


@pytest.fixture()
def served():
    """Run an app with uvicorn on a free loopback port in a background thread; yield its port."""
    import socket
    import threading
    import time

    import uvicorn

    servers = []

    def start(app) -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        return port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
