"""A scratch copy of the project for whole-pipeline tests: its own git repository, tiny parameters."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The lead's tiny parameter set (tiny model, a few steps, a small data slice), merged over params.yaml.
TINY_PARAMS = Path(os.environ.get("MEDSQL_TINY_PARAMS", ROOT / "tests" / "params_tiny.yaml"))
GIT = ["git", "-c", "user.name=medsql test", "-c", "user.email=test@example.org"]


def scratch_project(tmp_path: Path, params_update: dict | None = None, tiny: bool = True) -> Path:
    """A copy of the project's files in <tmp>/project, ../shared reachable, tiny params, its own git."""
    project = tmp_path / "project"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            (project / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, project / relative)
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if tiny or TINY_PARAMS.exists():
        assert TINY_PARAMS.exists(), f"the tiny parameter set {TINY_PARAMS} is missing"
        merge(params, yaml.safe_load(TINY_PARAMS.read_text()) or {})
    merge(params, params_update or {})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=project, check=True)
    subprocess.run([*GIT, "commit", "-qm", "scratch copy"], cwd=project, check=True)
    return project


def merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
