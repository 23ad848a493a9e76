"""The ingest stage on the real MIMICSQL files, on a local chat-format dataset, and on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from medsql import ingest, paths
from medsql.config import Config, ConfigError, from_dict, load_config
from medsql.text import collapse_whitespace
from medsql.util import resolve

MIMICSQL_DIR = resolve(load_config().data.mimicsql_dir)
WORDINGS = ["template", "natural", "natural_v2"]
CANONICAL = {"key", "variant", "question", "sql", "source", "origin"}
# Two queries MIMICSQL does not hold (test_hf_chat_from_local_json_file checks that).
SQL_A = 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."AGE" < "17"'
SQL_B = 'SELECT MAX ( DEMOGRAPHIC."DAYS_STAY" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."RELIGION" = "JEDI"'


def chat(user: str | None, assistant: str | None) -> dict:
    messages = [{"role": "system", "content": "Translate the question into SQLite SQL."}]
    if user is not None:
        messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages}


def params(mimicsql_dir: Path, sources: list[str], hf_path: str = "", variant: str = "natural") -> dict:
    return {"data": {"mimicsql_dir": str(mimicsql_dir)},
            "ingest": {"sources": sources,
                       "mimicsql": {"wordings": WORDINGS, "files": ["dev.jsonl", "test.jsonl"]},
                       "hf_chat": {"path": hf_path, "split": "train", "variant": variant}}}


def run(settings: dict) -> list[dict]:
    """ingest() on parameters shaped like params.yaml, typed through medsql.config."""
    cfg: Config = from_dict(settings)
    return ingest.ingest(cfg.ingest, cfg.data)


def run_main(tmp_path: Path, settings: dict, out: Path) -> int:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(settings))
    return ingest.main(["--params", str(params_file), "--out", str(out)])


@pytest.fixture()
def mimicsql_copy(tmp_path: Path) -> Path:
    """A copy of the real MIMICSQL files that a test may break."""
    return Path(shutil.copytree(MIMICSQL_DIR, tmp_path / "mimicsql"))


def test_real_data_all_three_wordings() -> None:
    cfg = load_config()
    records = ingest.ingest(cfg.ingest, cfg.data)
    assert len(records) == 5100
    assert all(set(r) == CANONICAL for r in records)
    assert Counter(r["variant"] for r in records) == {w: 1700 for w in WORDINGS}
    assert {r["source"] for r in records} == {"mimicsql"}
    by_key: dict[str, set[str]] = {}
    for r in records:
        by_key.setdefault(r["key"], set()).add(r["variant"])
    assert len(by_key) == 1700 and all(v == set(WORDINGS) for v in by_key.values())
    # origin is <wording>/<file>:<line> and points at the line the record came from
    record = next(r for r in records if r["origin"] == "natural/dev.jsonl:17")
    line = (MIMICSQL_DIR / "natural" / "dev.jsonl").read_text().splitlines()[16]
    source = json.loads(line)
    assert (record["key"], record["question"], record["sql"]) == (
        source["key"], source["question_refine"], source["sql"])


def test_main_writes_canonical_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "ingested.jsonl"
    assert run_main(tmp_path, params(MIMICSQL_DIR, ["mimicsql"]), out) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5100 and rows[0]["origin"] == "template/dev.jsonl:1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ingested")]  # no temp left


def test_hf_chat_from_local_json_file(tmp_path: Path) -> None:
    # The first answer repeats a MIMICSQL query; the others are new, one of them twice.
    mimicsql_line = json.loads((MIMICSQL_DIR / "template" / "dev.jsonl").read_text().splitlines()[0])
    rows = [chat("  how many with mal neo descend colon?  ", mimicsql_line["sql"]),
            chat("how many patients are younger than 45?", SQL_A),
            chat("count patients below age 45", f"```sql\n{SQL_A}\n```"),
            chat("longest stay of a female patient?", "  " + SQL_B.replace(" FROM", "   FROM"))]
    chat_file = tmp_path / "chat.json"
    chat_file.write_text(json.dumps(rows))

    records = run(params(MIMICSQL_DIR, ["mimicsql", "hf_chat"], str(chat_file), "clinician"))
    chat_records = [r for r in records if r["source"] == "hf_chat"]
    mimicsql_sql = {collapse_whitespace(r["sql"]) for r in records if r["source"] == "mimicsql"}
    assert collapse_whitespace(SQL_A) not in mimicsql_sql and collapse_whitespace(SQL_B) not in mimicsql_sql
    assert len(records) == 5104 and len(chat_records) == 4
    assert [r["origin"] for r in chat_records] == [f"{chat_file}[train]#{i}" for i in range(4)]
    assert {r["variant"] for r in chat_records} == {"clinician"}
    assert chat_records[0]["question"] == "how many with mal neo descend colon?"
    assert chat_records[0]["key"] == mimicsql_line["key"]  # identical SQL keeps MIMICSQL's key
    assert chat_records[1]["sql"] == chat_records[2]["sql"] == SQL_A  # fence stripped
    assert chat_records[1]["key"] == chat_records[2]["key"] == ingest.sql_key(SQL_A)
    assert chat_records[3]["key"] == ingest.sql_key(SQL_B)  # whitespace does not change a key
    assert len({r["key"] for r in chat_records}) == 3


def test_hf_chat_from_local_folder_of_jsonl(tmp_path: Path) -> None:
    folder = tmp_path / "chat_dataset"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text(json.dumps(chat("q one about age", SQL_A)) + "\n")
    (folder / "part-1.jsonl").write_text(json.dumps(chat("q two about stay", SQL_B)) + "\n")
    out = tmp_path / "ingested.jsonl"
    assert run_main(tmp_path, params(MIMICSQL_DIR, ["hf_chat"], str(folder)), out) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["question"], r["sql"], r["source"]) for r in rows] == [
        ("q one about age", SQL_A, "hf_chat"), ("q two about stay", SQL_B, "hf_chat")]


@pytest.mark.parametrize("row, missing", [(chat("a question", None), "assistant"),
                                          (chat(None, SQL_A), "user")])
def test_chat_row_without_user_or_assistant_is_named(tmp_path: Path, caplog, row, missing) -> None:
    chat_file = tmp_path / "chat.jsonl"
    chat_file.write_text("".join(json.dumps(r) + "\n" for r in [chat("fine", SQL_A), row]))
    out = tmp_path / "ingested.jsonl"
    out.write_text("previous good output\n")
    assert run_main(tmp_path, params(MIMICSQL_DIR, ["hf_chat"], str(chat_file)), out) == 1
    err = caplog.text
    assert f"{chat_file}[train]#1" in err and f"no {missing} message" in err
    assert out.read_text() == "previous good output\n"


def test_hub_id_goes_to_the_hub_and_fails_clearly_offline(tmp_path: Path) -> None:
    settings = params(MIMICSQL_DIR, ["hf_chat"], "some1oe/Medical-Text-to-SQL")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "medsql.ingest", "--params", str(tmp_path / "params.yaml"),
                           "--out", str(tmp_path / "ingested.jsonl")],
                          cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "cannot load 'some1oe/Medical-Text-to-SQL' split 'train' from the Hugging Face hub" in done.stderr
    assert not (tmp_path / "ingested.jsonl").exists()


def test_missing_local_chat_file_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ingest.IngestError, match=r"hf_chat: \./nowhere/chat\.jsonl: file or folder not"):
        run(params(MIMICSQL_DIR, ["hf_chat"], "./nowhere/chat.jsonl"))


def test_malformed_json_line_names_file_and_line(tmp_path: Path, mimicsql_copy: Path, caplog) -> None:
    target = mimicsql_copy / "natural" / "dev.jsonl"
    lines = target.read_text().splitlines(keepends=True)
    lines[16] = lines[16][:40] + "\n"  # line 17 cut short
    target.write_text("".join(lines))
    out = tmp_path / "ingested.jsonl"
    out.write_text("previous good output\n")
    assert run_main(tmp_path, params(mimicsql_copy, ["mimicsql"]), out) == 1
    assert "natural/dev.jsonl line 17: not valid JSON: " in caplog.text
    assert out.read_text() == "previous good output\n"


def test_bytes_that_are_not_utf8_are_named(mimicsql_copy: Path) -> None:
    target = mimicsql_copy / "template" / "test.jsonl"
    target.write_bytes(target.read_bytes().replace(b"how many", b"how m\xffny", 1))
    with pytest.raises(ingest.IngestError, match=r"^template/test\.jsonl: not UTF-8 text"):
        run(params(mimicsql_copy, ["mimicsql"]))


@pytest.mark.parametrize("field", ["key", "question_refine", "sql"])
def test_missing_field_names_field_and_line(tmp_path: Path, mimicsql_copy: Path, field: str) -> None:
    target = mimicsql_copy / "natural_v2" / "test.jsonl"
    lines = target.read_text().splitlines(keepends=True)
    record = json.loads(lines[4])
    del record[field]
    lines[4] = json.dumps(record) + "\n"
    target.write_text("".join(lines))
    with pytest.raises(ingest.IngestError) as raised:
        run(params(mimicsql_copy, ["mimicsql"]))
    assert str(raised.value) == f"natural_v2/test.jsonl line 5: missing field {field!r}"


def test_missing_file_and_unknown_source(tmp_path: Path, mimicsql_copy: Path, caplog) -> None:
    (mimicsql_copy / "template" / "test.jsonl").unlink()
    with pytest.raises(ingest.IngestError, match="template/test.jsonl: file not found"):
        run(params(mimicsql_copy, ["mimicsql"]))
    with pytest.raises(ConfigError, match="ingest.sources: .* must be a non-empty list of mimicsql, hf_chat"):
        run(params(mimicsql_copy, ["spider"]))
    # Through the stage: the parameter file's line is named, nothing is written.
    out = tmp_path / "ingested.jsonl"
    assert run_main(tmp_path, params(mimicsql_copy, ["spider"]), out) == 1
    assert f"{tmp_path / 'params.yaml'}:" in caplog.text and "ingest.sources" in caplog.text
    assert not out.exists()


def test_help_says_what_the_stage_reads_and_writes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "medsql.ingest", "--help"], cwd=paths.ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, MEDSQL_ROOT=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "reads:" in done.stdout and "writes: data/ingested.jsonl" in done.stdout
    assert not (tmp_path / "data").exists()
