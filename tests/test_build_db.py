"""build_db against the real MIMIC-III demo CSVs; expected values computed independently with pandas."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medsql import build_db, paths
from medsql.config import load_config
from medsql.schema import TABLES, column_type
from medsql.sqlform import to_single_quotes
from medsql.util import resolve

DEMO_DIR = resolve(load_config().data.mimic_demo_dir)
MIMICSQL_DIR = resolve(load_config().data.mimicsql_dir)


@pytest.fixture(scope="module")
def db(mimicsql_db) -> Path:
    return mimicsql_db  # built once a session by conftest, with build_db.build


@pytest.fixture(scope="module")
def conn(db):
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    def read(name: str) -> pd.DataFrame:
        frame = pd.read_csv(DEMO_DIR / f"{name}.csv", dtype=str)
        frame.columns = [c.upper() for c in frame.columns]
        return frame
    return {n: read(n) for n in ("ADMISSIONS", "PATIENTS", "DIAGNOSES_ICD", "D_ICD_DIAGNOSES",
                                  "PRESCRIPTIONS", "LABEVENTS", "D_LABITEMS")}


@pytest.fixture(scope="module")
def demographic(frames) -> pd.DataFrame:
    """DEMOGRAPHIC recomputed with pandas date arithmetic (not the module's code path)."""
    adm = frames["ADMISSIONS"].merge(frames["PATIENTS"].drop(columns=["ROW_ID"]), on="SUBJECT_ID")
    admit, disch = pd.to_datetime(adm["ADMITTIME"]), pd.to_datetime(adm["DISCHTIME"])
    age = admit.dt.year - pd.to_datetime(adm["DOB"]).dt.year
    adm["AGE"] = age.where(age <= 89, age - 211)
    adm["DAYS_STAY"] = (disch - admit).dt.days
    return adm


def gold_sql(key: str) -> str:
    with open(MIMICSQL_DIR / "template" / "dev.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            if record["key"] == key:
                return record["sql"]
    raise KeyError(key)


def scalar(conn, sql: str):
    return conn.execute(to_single_quotes(sql)).fetchone()[0]


def test_row_counts(conn, frames):
    count = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    assert count["DEMOGRAPHIC"] == 129
    assert conn.execute("SELECT COUNT(DISTINCT SUBJECT_ID) FROM DEMOGRAPHIC").fetchone()[0] == 100
    # The original's inner joins drop 45 diagnoses and 3 procedures with codes the dictionary lacks.
    assert count["DIAGNOSES"] == 1761 - 45
    assert count["PROCEDURES"] == 506 - 3
    rx = frames["PRESCRIPTIONS"]
    assert count["PRESCRIPTIONS"] == int((rx["DOSE_VAL_RX"].notna() & rx["DOSE_UNIT_RX"].notna()).sum())
    lab = frames["LABEVENTS"].dropna(subset=["HADM_ID", "VALUE", "VALUEUOM"])
    lab = lab[lab["HADM_ID"].isin(frames["ADMISSIONS"]["HADM_ID"])]
    assert count["LAB"] == len(lab.merge(frames["D_LABITEMS"], on="ITEMID"))
    for name, rows in (("D_ICD_DIAGNOSES", 14567), ("D_ICD_PROCEDURES", 3882), ("D_LABITEMS", 753)):
        assert conn.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0] == rows


def test_columns_in_schema_order_with_original_types(conn):
    for table, columns in TABLES.items():
        info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
        assert [c[1] for c in info] == columns
        assert [c[2] for c in info] == [column_type(table, c) for c in columns]
    assert column_type("DEMOGRAPHIC", "AGE") == "INTEGER"
    assert column_type("LAB", "ITEMID") == "TEXT"
    typeof = conn.execute("SELECT DISTINCT typeof(AGE), typeof(DAYS_STAY), typeof(HADM_ID) "
                          "FROM DEMOGRAPHIC").fetchall()
    assert typeof == [("integer", "integer", "text")]


def test_numbers_compare_as_numbers(conn, demographic):
    expected = demographic.loc[demographic["AGE"] < 45, "SUBJECT_ID"].nunique()
    got = scalar(conn, 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
                       'WHERE DEMOGRAPHIC."AGE" < "45"')
    assert got == expected > 0
    # Two-digit ages sort the same either way; single-digit stays show the difference ("2" > "11").
    expected = demographic.loc[demographic["DAYS_STAY"] > 11, "HADM_ID"].nunique()
    got = scalar(conn, 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."HADM_ID" ) FROM DEMOGRAPHIC '
                       'WHERE DEMOGRAPHIC."DAYS_STAY" > "11"')
    lexicographic = demographic.loc[demographic["DAYS_STAY"].astype(str) > "11", "HADM_ID"].nunique()
    assert got == expected and lexicographic != expected


def test_demographic_fields(conn, demographic):
    ours = pd.read_sql("SELECT * FROM DEMOGRAPHIC", conn)
    merged = ours.merge(demographic, on="HADM_ID", suffixes=("", "_pd"))
    assert len(merged) == 129
    assert (merged["AGE"] == merged["AGE_pd"]).all()
    assert (merged["DAYS_STAY"] == merged["DAYS_STAY_pd"]).all()
    assert (merged["EXPIRE_FLAG"].astype(str) == merged["EXPIRE_FLAG_pd"]).all()
    assert (merged["DOB"] == merged["DOB_pd"]).all() and merged["DOB"].str.match(r"\d{4}-\d\d-\d\d ").all()
    assert (merged["DOB_YEAR"] == merged["DOB"].str[:4].astype(int)).all()
    assert (merged["ADMITYEAR"] == merged["ADMITTIME"].str[:4].astype(int)).all()
    assert (merged["DOD_YEAR"] == merged["DOD"].str[:4].astype(float)).all()
    assert (merged["DIAGNOSIS"] == merged["DIAGNOSIS_pd"]).all()
    # An empty LANGUAGE in ADMISSIONS is NULL, as pandas NaN became in the original.
    assert merged["LANGUAGE"].isna().sum() == merged["LANGUAGE_pd"].isna().sum() > 0


def test_names_from_names_csv(conn):
    names = pd.read_csv(DEMO_DIR / "NAMES.csv", header=None, names=["SUBJECT_ID", "NAME"], dtype=str)
    ours = pd.read_sql("SELECT DISTINCT SUBJECT_ID, NAME FROM DEMOGRAPHIC", conn)
    merged = ours.merge(names, on="SUBJECT_ID", suffixes=("", "_csv"))
    assert len(merged) == 100 and (merged["NAME"] == merged["NAME_csv"]).all()
    row = conn.execute("SELECT NAME FROM DEMOGRAPHIC WHERE SUBJECT_ID = '10006'").fetchone()
    assert row == (names.set_index("SUBJECT_ID").loc["10006", "NAME"],)


def test_patients_by_gender(conn, frames):
    for gender, expected in frames["PATIENTS"]["GENDER"].value_counts().items():
        sql = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC '
               f'WHERE DEMOGRAPHIC."GENDER" = "{gender}"')
        assert scalar(conn, sql) == expected


def test_gold_lab_query(conn, frames):
    sql = gold_sql("d5255cb3890ee87d8b5a8f22a664d49b")  # DISCHARGE_LOCATION SNF, lab Magnesium
    assert '"Magnesium"' in sql
    adm = frames["ADMISSIONS"]
    lab = frames["LABEVENTS"].dropna(subset=["VALUE", "VALUEUOM"]).merge(frames["D_LABITEMS"], on="ITEMID")
    hadm = set(lab.loc[lab["LABEL"] == "Magnesium", "HADM_ID"])
    expected = adm[(adm["DISCHARGE_LOCATION"] == "SNF") & adm["HADM_ID"].isin(hadm)]["SUBJECT_ID"].nunique()
    assert expected > 0 and scalar(conn, sql) == expected


def test_gold_diagnosis_and_age_query(conn, frames, demographic):
    sql = gold_sql("2721439d3171befac524caf343e499e1")  # AGE < 76 and ICD9_CODE 99591
    dx = frames["DIAGNOSES_ICD"]
    hadm = set(dx.loc[dx["ICD9_CODE"] == "99591", "HADM_ID"])
    chosen = demographic[(demographic["AGE"] < 76) & demographic["HADM_ID"].isin(hadm)]
    assert scalar(conn, sql) == chosen["SUBJECT_ID"].nunique() > 0


def test_gold_average_and_days_stay(conn, frames, demographic):
    avg_sql = gold_sql("28489b020c497681498317afef320c2d")  # AVG(AGE), MARRIED, AGE >= 43
    chosen = demographic[(demographic["MARITAL_STATUS"] == "MARRIED") & (demographic["AGE"] >= 43)]
    assert scalar(conn, avg_sql) == pytest.approx(chosen["AGE"].mean())
    stay_sql = gold_sql("ec3578b74ba125edb15c75d2607c6cf9")  # DAYS_STAY > 11, DRUG_TYPE BASE
    rx = frames["PRESCRIPTIONS"]
    hadm = set(rx.loc[(rx["DRUG_TYPE"] == "BASE") & rx["DOSE_VAL_RX"].notna() & rx["DOSE_UNIT_RX"].notna(),
                      "HADM_ID"])
    expected = demographic[(demographic["DAYS_STAY"] > 11) & demographic["HADM_ID"].isin(hadm)]
    assert scalar(conn, stay_sql) == expected["SUBJECT_ID"].nunique() > 0


def test_value_unit_joins(conn):
    dose = conn.execute("SELECT DRUG_DOSE FROM PRESCRIPTIONS WHERE DRUG = 'Bisacodyl' LIMIT 1").fetchone()
    assert dose == ("10mg",)
    lab = conn.execute("SELECT VALUE_UNIT, LABEL, SUBJECT_ID FROM LAB WHERE HADM_ID = '193924' "
                       "AND ITEMID = '51221' AND CHARTTIME = '2115-05-13 14:53:00'").fetchone()
    assert lab == ("23.9%", "Hematocrit", "10120")


def test_every_gold_query_executes(conn):
    queries = set()
    for path in sorted(MIMICSQL_DIR.glob("*/*.jsonl")):
        with open(path) as handle:
            queries.update(json.loads(line)["sql"] for line in handle)
    informative = 0
    for sql in queries:
        rows = conn.execute(to_single_quotes(sql)).fetchall()
        informative += any(v not in (None, 0) for row in rows for v in row)
    assert len(queries) == 1700
    assert 0 < informative < len(queries)  # many questions name values the 100 demo patients lack


def test_failed_build_keeps_previous_db(db, tmp_path):
    target = tmp_path / "mimicsql.db"
    shutil.copy(db, target)
    before = (target.read_bytes(), os.stat(target).st_mtime_ns)
    broken = tmp_path / "demo"
    broken.mkdir()
    for source in DEMO_DIR.glob("*.csv"):
        (broken / source.name).symlink_to(source)
    (broken / "ADMISSIONS.csv").unlink()
    lines = (DEMO_DIR / "ADMISSIONS.csv").read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[3], "not-a-time")
    (broken / "ADMISSIONS.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(build_db.BuildError, match=r"ADMISSIONS.csv:6: field ADMITTIME"):
        build_db.build(broken, target)
    assert (target.read_bytes(), os.stat(target).st_mtime_ns) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mimicsql.db.")]


def test_missing_column_names_file(tmp_path):
    broken = tmp_path / "demo"
    broken.mkdir()
    for source in DEMO_DIR.glob("*.csv"):
        (broken / source.name).symlink_to(source)
    (broken / "PATIENTS.csv").unlink()
    (broken / "PATIENTS.csv").write_text("row_id,subject_id,dob\n1,10006,2094-03-05 00:00:00\n")
    with pytest.raises(build_db.BuildError, match=r"PATIENTS.csv: missing column\(s\) GENDER"):
        build_db.build(broken, tmp_path / "out.db")
    assert not (tmp_path / "out.db").exists()


def test_main_builds_the_same_bytes_into_the_project_root(db, tmp_path, monkeypatch, caplog):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"mimic_demo_dir": str(DEMO_DIR)}}))
    monkeypatch.setenv("MEDSQL_PARAMS", str(params))
    original = paths.ROOT
    paths.set_root(tmp_path)
    try:
        assert build_db.main([]) == 0
        assert paths.DB.read_bytes() == db.read_bytes()  # same CSVs, byte-identical database
        assert f"wrote {paths.DB}: DEMOGRAPHIC=129" in caplog.text
        params.write_text(yaml.safe_dump({"data": {"mimic_demo_dir": 3}}))
        assert build_db.main([]) == 1
        assert f"{params}:2: data.mimic_demo_dir: expected text, got 3" in caplog.text
    finally:
        paths.set_root(original)


def test_help_says_what_the_stage_reads_and_writes(tmp_path):
    done = subprocess.run([sys.executable, "-m", "medsql.build_db", "--help"], cwd=paths.ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, MEDSQL_ROOT=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "reads:  params.yaml (data.mimic_demo_dir)" in done.stdout and "writes: data/mimicsql.db" in done.stdout
    assert not list(tmp_path.iterdir())  # --help does no work
