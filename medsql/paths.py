"""Where each stage reads and writes, relative to the project root (dvc.yaml names the same)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
