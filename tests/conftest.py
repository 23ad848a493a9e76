"""Shared pytest fixtures; each part of the project keeps its own in a marked section below."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---- ingest / validate (tests/test_ingest.py, tests/test_validate.py) --------------------------


@pytest.fixture(scope="session")
def mimicsql_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MIMICSQL database built by the build_db stage's code from the shared demo CSVs."""
    build_db = pytest.importorskip("medsql.build_db", reason="medsql.build_db (the DB builder) not there yet")
    from medsql.util import load_params, resolve

    out = tmp_path_factory.mktemp("mimicsql_db") / "mimicsql.db"
    build_db.build(resolve(load_params()["data"]["mimic_demo_dir"]), out)
    return out


# ---- end ingest / validate ---------------------------------------------------------------------
