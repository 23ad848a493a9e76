"""Where each stage reads and writes, relative to the project root (dvc.yaml names the same).

The root is the checkout holding this package, or $MEDSQL_ROOT; tests move it to a temporary
folder with `set_root` so that they never touch the project's own data and models.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT: Path
PARAMS: Path
DATA: Path
DB: Path
INGESTED: Path
SPLITS: Path
SUITE: Path
METRICS: Path
REPORTS: Path
VALIDATION_REPORT: Path
VALIDATION_SUMMARY: Path
DATA_STATS: Path
MODELS: Path
MODEL: Path
CHECKPOINTS: Path
GX_DIR: Path


def set_root(root: str | os.PathLike) -> None:
    """Point every path below at `root`."""
    global ROOT, PARAMS, DATA, DB, INGESTED, SPLITS, SUITE, METRICS, REPORTS, VALIDATION_REPORT
    global VALIDATION_SUMMARY, DATA_STATS, MODELS, MODEL, CHECKPOINTS, GX_DIR
    ROOT = Path(root).resolve()
    PARAMS = ROOT / "params.yaml"
    DATA = ROOT / "data"
    DB = DATA / "mimicsql.db"
    INGESTED = DATA / "ingested.jsonl"
    SPLITS = DATA / "splits"
    SUITE = DATA / "suite"
    METRICS = ROOT / "metrics"
    REPORTS = ROOT / "reports"
    VALIDATION_REPORT = REPORTS / "validation"
    VALIDATION_SUMMARY = METRICS / "validation.json"
    DATA_STATS = METRICS / "data_stats.json"
    MODELS = ROOT / "models"
    MODEL = MODELS / "medsql"
    CHECKPOINTS = ROOT / "checkpoints"
    GX_DIR = ROOT / "gx"


set_root(os.environ.get("MEDSQL_ROOT") or Path(__file__).resolve().parent.parent)
