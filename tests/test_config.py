"""Parameters have one source of truth: medsql/config.py's dataclasses, read the same way everywhere."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from medsql import config
from medsql.config import Config, ConfigError, from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
CODE = sorted((ROOT / "medsql").rglob("*.py")) + sorted((ROOT / "dags").glob("*.py"))
CONFIG_FILE = ROOT / "medsql" / "config.py"


def settings(cls: type = Config, prefix: tuple[str, ...] = (), whole: bool = False) -> list[tuple[str, ...]]:
    """Every leaf setting's key path, e.g. ('evaluate', 'bootstrap', 'resamples'); with `whole`, a
    section read as a whole through its own `as_dict()` counts as one setting."""
    out = []
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        section = hints[spec.name]
        if whole and dataclasses.is_dataclass(section) and hasattr(section, "as_dict"):
            out.append((*prefix, spec.name))
        elif dataclasses.is_dataclass(section):
            out += settings(section, (*prefix, spec.name), whole)
        else:
            out.append((*prefix, spec.name))
    return out


def attribute_names(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
    return names


def test_the_project_params_yaml_loads_into_the_typed_config():
    cfg = load_config(ROOT / "params.yaml")
    assert isinstance(cfg, Config)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(Config)}, "params.yaml mirrors config.py's sections"


def test_every_setting_is_read_by_some_code():
    read = attribute_names([p for p in CODE if p != CONFIG_FILE])
    unread = [".".join(path) for path in settings(whole=True) if path[-1] not in read]
    assert not unread, f"settings that no code reads (delete them from config.py and params.yaml): {unread}"


def test_no_code_but_config_reads_params_yaml_or_gives_a_setting_a_default():
    names = {path[-1] for path in settings()}
    offenders = []
    for path in CODE:
        if path == CONFIG_FILE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute | ast.Name):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if name == "load_params":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: load_params (use medsql.config)")
            elif (name == "get" and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                  and node.args[0].value in names and isinstance(node.args[1], ast.Constant)
                  and node.args[1].value is not None):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: .get({node.args[0].value!r}, "
                                 f"{node.args[1].value!r}) repeats a default that lives in medsql/config.py")
    assert not offenders, "\n".join(offenders)


def test_an_unknown_key_is_refused_with_file_line_and_key(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 2\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"params.yaml:3: train.epochz: unknown setting"):
        load_config(path)


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  epochs: many\n", r":2: train.epochs: expected a number"),
    ("train:\n  bf16: 1\n", r":2: train.bf16: expected true or false"),
    ("evaluate:\n  recovery:\n    threshold: 101\n", r":3: evaluate.recovery.threshold: 101 must be between 0 and 100"),
    ("train:\n  profile: gpu\n", r":2: train.profile: 'gpu' must be one of embedded, reference"),
    ("suite: [1, 2]\n", r":1: suite: expected a mapping"),
])
def test_a_wrong_value_is_refused_naming_where_it_is(tmp_path: Path, text: str, message: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_missing_section_or_key_takes_the_one_default_in_config():
    cfg = from_dict({})
    assert cfg == Config()
    assert cfg.evaluate.bootstrap.resamples == 1000 and cfg.register.margin == 0.01


def test_the_reference_profile_is_resolved_once_into_the_train_settings():
    cfg = from_dict({"train": {"profile": "reference", "epochs": 18, "reference": {"epochs": 5}}})
    assert cfg.train.epochs == 5 and cfg.train.optimizer == "adamw" and cfg.train.target_form == "sql"
    assert all(getattr(cfg.train.reference, key) is None for key in config.PROFILE_OVERRIDES)
    assert cfg.train.reference.lora.r == 16
    embedded = from_dict({"train": {"epochs": 18}})
    assert embedded.train.epochs == 18 and embedded.train.optimizer == "adafactor"
