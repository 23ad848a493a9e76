"""Logging for every entry point: one format, levels through the standard `logging` module.

Each module logs with `log = logging.getLogger(__name__)`; an entry point (a stage's `main()`,
the `medsql` command) calls `configure()` once. Progress bars are drawn only on a terminal:
`on_terminal()` says whether stderr is one, and the Trainer's tqdm bars are switched off
elsewhere (DVC, Airflow task logs), where a periodic log line stands in for them.

$MEDSQL_LOG_LEVEL (DEBUG, INFO, WARNING, ...) sets the level; INFO by default.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


def on_terminal() -> bool:
    """True when stderr is an interactive terminal (progress bars are drawn only then)."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def configure(level: str | int | None = None) -> None:
    """Send log records of medsql (and the libraries it drives) to stderr, one line each."""
    level = level or os.environ.get("MEDSQL_LOG_LEVEL") or "INFO"
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    logging.basicConfig(level=level, format=FORMAT, datefmt=DATE_FORMAT, stream=sys.stderr)
    logging.getLogger("medsql").setLevel(level)
    if not on_terminal():
        # Libraries that draw their own bars (datasets' map, transformers' loading) stay quiet.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if "transformers" in sys.modules:  # tqdm read TQDM_DISABLE when imported, before this: too late
            sys.modules["transformers"].utils.logging.disable_progress_bar()
        try:
            from datasets.utils.logging import disable_progress_bar
        except ImportError:  # datasets not installed where only serving runs
            return
        disable_progress_bar()
