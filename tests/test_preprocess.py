"""The preprocess stage on the real MIMICSQL data: a split by query key, model inputs, stats."""

from __future__ import annotations

from collections import defaultdict

import pytest

from medsql import ingest, paths, preprocess
from medsql.util import load_params, read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return ingest.ingest(load_params())


def test_every_wording_of_a_query_lands_in_one_split(records) -> None:
    params = load_params()["preprocess"]
    splits = preprocess.preprocess(records, params)
    where: dict[str, set[str]] = defaultdict(set)
    for name, rows in splits.items():
        for row in rows:
            where[row["key"]].add(name)
    assert all(len(names) == 1 for names in where.values()), "a query leaked across splits"
    assert sum(len(rows) for rows in splits.values()) == len(records) == 5100
    stats = preprocess.stats(splits)
    for name, fraction in params["fractions"].items():
        assert stats[name]["template"] == stats[name]["natural"] == stats[name]["natural_v2"]
        assert abs(stats[name]["keys"] / 1700 - fraction) < 0.03, (name, stats[name])
    # The same seed splits the same way; another seed does not.
    again = preprocess.preprocess(records, params)
    assert [r["key"] for r in again["test"]] == [r["key"] for r in splits["test"]]
    other = preprocess.preprocess(records, params | {"seed": params["seed"] + 1})
    assert {r["key"] for r in other["test"]} != {r["key"] for r in splits["test"]}


def test_inputs_carry_the_prefix_the_lower_cased_question_and_optionally_the_schema() -> None:
    record = {"key": "k", "variant": "natural", "question": "  How many   PATIENTS are over 65? ",
              "sql": ' SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC ', "source": "x",
              "origin": "f:1"}
    params = load_params()["preprocess"]
    row = next(r for rows in preprocess.preprocess([record], params).values() for r in rows)
    assert row["input"] == params["task_prefix"] + "how many patients are over 65?"
    assert row["target"] == row["sql"] == 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC'
    with_schema = preprocess.preprocess([record], params | {"schema_context": True})
    row = next(r for rows in with_schema.values() for r in rows)
    assert "| tables: demographic(subject_id, hadm_id" in row["input"]


def test_main_writes_splits_and_stats_and_a_failure_keeps_the_old_ones(records, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEDSQL_PARAMS", str(paths.PARAMS))  # the project's params, a scratch root
    original = paths.ROOT
    paths.set_root(tmp_path)
    try:
        paths.INGESTED.parent.mkdir(parents=True)
        write_jsonl(paths.INGESTED, records)
        preprocess.main()
        written = {name: list(read_jsonl(paths.SPLITS / f"{name}.jsonl")) for name in preprocess.SPLIT_NAMES}
        assert sum(map(len, written.values())) == 5100
        assert (paths.DATA_STATS).is_file()
        before = (paths.SPLITS / "test.jsonl").read_bytes()
        paths.INGESTED.write_text('{"key": "k"}\n')  # a record without its fields: the stage fails
        with pytest.raises(KeyError):
            preprocess.main()
        assert (paths.SPLITS / "test.jsonl").read_bytes() == before
    finally:
        paths.set_root(original)
