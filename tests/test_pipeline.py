"""dvc.yaml as medsql.pipeline reads it: each stage's code deps are exactly the code it runs, and the
graph is the one DVC itself builds. The checks read the source with ast: nothing heavy is imported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from medsql.pipeline import check, code_dependencies, describe, load_pipeline

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_each_stage_declares_exactly_the_code_it_runs():
    wrong = [result for result in check(load_pipeline(ROOT / "dvc.yaml")) if not result.ok]
    if wrong:
        pytest.fail("dvc.yaml's code deps do not match the code the stages run "
                    "(`python -m medsql.pipeline --check`); edit these stages:\n" + describe(wrong), pytrace=False)


def test_the_graph_is_the_one_dvc_builds():
    dot = subprocess.run([BIN / "dvc", "dag", "--dot"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    by_dvc = set(re.findall(r'"([^"]+)" -> "([^"]+)"', dot))
    pipeline = load_pipeline(ROOT / "dvc.yaml")
    assert pipeline.edges() == by_dvc
    assert ("train", "build_suite") not in pipeline.edges()  # the suite does not wait for training


def test_nothing_reads_the_ingested_pairs_before_they_are_validated():
    pipeline = load_pipeline(ROOT / "dvc.yaml")
    readers = [name for name in pipeline.stages if "ingest" in pipeline.upstream(name) and name != "validate"]
    assert "preprocess" in readers and "build_suite" in readers
    assert [name for name in readers if "validate" not in pipeline.upstream(name)] == []


# --- the reader on a small project of its own ----------------------------------------------------------

MODULES = {
    "__init__.py": '"""The package."""\n__version__ = "1.0"\n',
    "sub/__init__.py": '"""Docstring only."""\n',
    "sub/deep.py": "from . import sibling\n",
    "sub/sibling.py": "X = 1\n",
    "sub/lazy.py": "X = 2\n",
    "stage_a.py": (
        "from typing import TYPE_CHECKING\n"
        "import yaml\n"
        "from medsql import helper\n"
        "from medsql.sub.deep import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from medsql import typing_only\n"
        "def main():\n"
        "    import medsql.sub.lazy\n"
        "    from .nested import thing\n"),
    "helper.py": "import json\n",
    "nested/__init__.py": "from .inner import thing\n",
    "nested/inner.py": "thing = 1\n",
    "typing_only.py": "",
    "unused.py": "",
    "stage_b.py": "from medsql import __version__\n",
    "validate.py": "",
}
DVC_YAML = """\
stages:
  a:
    cmd: python -m medsql.stage_a --flag
    deps: [medsql/stage_a.py, medsql/helper.py, medsql/unused.py, medsql/sub, data/in.csv]
    outs: [data/out]
    metrics: [{metrics/a.json: {cache: false}}]
  b:
    cmd: python -m medsql.stage_b
    deps: [medsql/stage_b.py, medsql/__init__.py, data/out/part.csv, gx/expectations]
    plots: [{reports/b.csv: {x: step}}]
  c:
    cmd: [python -m medsql.validate, echo done]
    deps: [medsql/validate.py, metrics/a.json, data]
  d:
    cmd: echo no python here
    deps: [reports/b.csv]
    outs: [reports/d.txt]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name, text in MODULES.items():
        (tmp_path / "medsql" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "medsql" / name).write_text(text)
    for folder in ("gx/expectations", "gx/checkpoints", "gx/uncommitted"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "gx" / "great_expectations.yml").write_text("config_version: 4\n")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    return tmp_path


def test_the_closure_follows_every_import_that_runs(project):
    pipeline = load_pipeline(project / "dvc.yaml")
    assert code_dependencies(pipeline.stages["a"], project) == {
        "medsql/stage_a.py", "medsql/helper.py",   # module level
        "medsql/sub/deep.py", "medsql/sub/sibling.py",   # transitively, a relative import
        "medsql/sub/lazy.py", "medsql/nested/__init__.py", "medsql/nested/inner.py",  # inside a function
    }  # not: typing_only (TYPE_CHECKING), yaml and json (other packages), docstring-only __init__.py files
    # A name taken from a package makes its __init__.py a dependency.
    assert code_dependencies(pipeline.stages["b"], project) == {"medsql/stage_b.py", "medsql/__init__.py"}
    # validate also reads the versioned GX context, not GX's scratch folder.
    assert code_dependencies(pipeline.stages["c"], project) == {
        "medsql/validate.py", "gx/checkpoints", "gx/expectations", "gx/great_expectations.yml"}
    assert code_dependencies(pipeline.stages["d"], project) == set()


def test_the_check_names_what_to_add_and_remove_per_stage(project):
    results = {result.stage: result for result in check(load_pipeline(project / "dvc.yaml"))}
    assert results["a"].add == ("medsql/nested/__init__.py", "medsql/nested/inner.py", "medsql/sub/deep.py",
                                "medsql/sub/lazy.py", "medsql/sub/sibling.py")
    assert results["a"].remove == ("medsql/unused.py (not imported or read)",
                                   "medsql/sub (a package folder: list the files the stage imports)")
    assert results["b"].add == () and results["b"].remove == ("gx/expectations (not imported or read)",)
    assert results["c"].add == ("gx/checkpoints", "gx/expectations", "gx/great_expectations.yml")
    assert results["c"].remove == ()  # `data` is data, not code: not this check's business
    assert results["d"].ok
    text = describe(list(results.values()))
    assert "a:\n  add    medsql/nested/__init__.py\n" in text and "\nd: ok" in text


def test_an_edge_wherever_a_dep_meets_an_output(project):
    pipeline = load_pipeline(project / "dvc.yaml")
    # b reads a file inside a's output folder; c reads a's metrics and a folder holding a's output; d reads
    # b's plot.
    assert pipeline.edges() == {("a", "b"), ("a", "c"), ("b", "d")}
    assert pipeline.upstream("c") == ["a"] and pipeline.leaves() == ["c", "d"]


def test_the_command_prints_the_fixes_and_fails_until_they_are_made(project):
    command = [sys.executable, "-m", "medsql.pipeline", "--check", "--dvc-yaml", str(project / "dvc.yaml")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "  remove medsql/unused.py (not imported or read)" in done.stdout

    fixed = DVC_YAML.replace("medsql/unused.py, medsql/sub,", "medsql/nested/__init__.py, medsql/nested/inner.py, "
                             "medsql/sub/deep.py, medsql/sub/lazy.py, medsql/sub/sibling.py,")
    fixed = fixed.replace(", gx/expectations]", "]").replace(
        "[medsql/validate.py,", "[medsql/validate.py, gx/checkpoints, gx/expectations, gx/great_expectations.yml,")
    (project / "dvc.yaml").write_text(fixed)
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["a:", "ok", "b:", "ok", "c:", "ok", "d:", "ok"]

    (project / "medsql" / "stage_b.py").write_text("def broken(:\n")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "stage_b.py" in done.stderr


def test_help_prints_and_does_nothing():
    done = subprocess.run([sys.executable, "-m", "medsql.pipeline", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--check" in done.stdout
