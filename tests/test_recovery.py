"""Value recovery on a tiny database and training split built here."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest
from dbtools import create_schema

from medsql.evaluation.recovery import ValueIndex

SQL = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN DIAGNOSES on '
       'DEMOGRAPHIC.HADM_ID = DIAGNOSES.HADM_ID WHERE DIAGNOSES."SHORT_TITLE" = "{title}" '
       'AND DEMOGRAPHIC."AGE" < "{age}"')


@pytest.fixture
def index_files(tmp_path):
    db = tmp_path / "mimicsql.db"
    conn = sqlite3.connect(db)
    create_schema(conn)
    conn.execute('CREATE TABLE D_ICD_DIAGNOSES ("ROW_ID" TEXT, "ICD9_CODE" TEXT, "SHORT_TITLE" TEXT, '
                 '"LONG_TITLE" TEXT)')
    conn.executemany("INSERT INTO DIAGNOSES (SUBJECT_ID, HADM_ID, ICD9_CODE, SHORT_TITLE) "
                     "VALUES (?, ?, ?, ?)",
                     [("1", "10", "5770", "Acute pancreatitis"), ("2", "20", "4019", "Hypertension NOS")])
    # In the dictionary only: no demo patient has it, a question still may name it.
    conn.execute("INSERT INTO D_ICD_DIAGNOSES VALUES ('1', 'V5861', 'Long-term use anticoagul', 'Long-term')")
    conn.executemany("INSERT INTO LAB (SUBJECT_ID, HADM_ID, FLUID) VALUES (?, ?, ?)",
                     [("1", "10", "BLOOD"), ("1", "10", "Blood"), ("2", "20", "Blood")])
    conn.execute("INSERT INTO DEMOGRAPHIC (SUBJECT_ID, HADM_ID, GENDER, AGE, NAME) VALUES "
                 "('1', '10', 'F', 50, 'Alice Nixon'), ('2', '20', 'M', 60, 'Anna Morris')")
    conn.commit()
    conn.close()
    train = tmp_path / "train.jsonl"
    rows = [{"key": "k1", "variant": "template", "question": "q",
             "sql": SQL.format(title="Mal neo descend colon", age="45")},
            {"key": "k2", "variant": "natural", "question": "q",
             "sql": "SELECT something outside the grammar"}]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return db, train


def test_mis_cased_and_misspelt_literals_are_fixed(index_files):
    index = ValueIndex.build(*index_files)
    assert index.recover(SQL.format(title="acute pancreatitis", age="45")) == SQL.format(
        title="Acute pancreatitis", age="45")
    assert index.recover(SQL.format(title="Acute pancreatits", age="45")) == SQL.format(
        title="Acute pancreatitis", age="45")
    # A training-split literal and a dictionary-only title are found too.
    assert index.recover_value("DIAGNOSES", "SHORT_TITLE", "mal neo descnd colon") == "Mal neo descend colon"
    dictionary_only = index.recover_value("DIAGNOSES", "SHORT_TITLE", "long-term use anticoagul")
    assert dictionary_only == "Long-term use anticoagul"


def test_exact_hits_and_far_values_are_left_alone(index_files):
    index = ValueIndex.build(*index_files)
    right = SQL.format(title="Acute pancreatitis", age="45")
    assert index.recover(right) is right
    assert index.recover_value("DIAGNOSES", "SHORT_TITLE", "Zebra fever") == "Zebra fever"
    # Both casings exist: an exact one is kept, a third casing gets the most frequent one.
    assert index.recover_value("LAB", "FLUID", "BLOOD") == "BLOOD"
    assert index.recover_value("LAB", "FLUID", "blood") == "Blood"
    # Numbers are never snapped; SQL outside the grammar comes back unchanged.
    assert index.recover_value("DEMOGRAPHIC", "AGE", "4") == "4"
    assert index.recover("SELECT garbage") == "SELECT garbage"


def test_codes_get_their_casing_but_no_fuzzy_match(index_files):
    index = ValueIndex.build(*index_files)
    assert index.recover_value("DIAGNOSES", "ICD9_CODE", "v5861") == "V5861"
    # 5771 is one digit from 5770, but another code is another diagnosis: left alone.
    assert index.recover_value("DIAGNOSES", "ICD9_CODE", "5771") == "5771"


def test_values_come_only_from_the_demo_tables_dictionaries_and_training_split(index_files, tmp_path):
    db, train = index_files
    index = ValueIndex.build(db, train)
    # A test-only literal (as a suite database would hold it) is unknown to the index.
    assert "Rare fever" not in index.values("DIAGNOSES", "SHORT_TITLE")
    assert index.recover_value("DIAGNOSES", "SHORT_TITLE", "rare fevr") == "Rare fevr"  # its casing, no snap
    assert set(index.values("DIAGNOSES", "SHORT_TITLE")) == {
        "Acute pancreatitis", "Hypertension NOS", "Long-term use anticoagul", "Mal neo descend colon"}


def test_threshold_and_missing_inputs(index_files, tmp_path):
    db, train = index_files
    strict = ValueIndex.build(db, train, threshold=99)
    assert strict.recover_value("DIAGNOSES", "SHORT_TITLE", "Acute pancreatits") == "Acute pancreatits"
    with pytest.raises(FileNotFoundError, match="nothere.db"):
        ValueIndex.build(tmp_path / "nothere.db", train)
    with pytest.raises(FileNotFoundError, match="train_missing"):
        ValueIndex.build(db, tmp_path / "train_missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "k"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'sql'"):
        ValueIndex.build(db, bad)


def test_only_the_literals_change(index_files):
    index = ValueIndex.build(*index_files)
    lower = SQL.format(title="acute pancreatitis", age="45").lower().replace("inner join", "INNER  JOIN")
    recovered = index.recover(lower)
    assert recovered == lower.replace('"acute pancreatitis"', '"Acute pancreatitis"')
    single = SQL.format(title="X", age="45").replace('"X"', "'acute pancreatits'")
    assert index.recover(single) == single.replace("'acute pancreatits'", "'Acute pancreatitis'")


def test_a_lost_casing_follows_the_columns_pattern(index_files):
    index = ValueIndex.build(*index_files)
    # A patient the demo lacks: no value to snap to, but names are written "First Last".
    assert index.recover_value("DEMOGRAPHIC", "NAME", "robert clayton") == "Robert Clayton"
    assert index.recover_value("DEMOGRAPHIC", "NAME", "alice nixon") == "Alice Nixon"
    assert index.recover_value("DEMOGRAPHIC", "NAME", "Robert clayton") == "Robert clayton"  # casing given
    # Most titles are written in sentence case ("Acute pancreatitis", not "Hypertension NOS").
    assert index.recover_value("DIAGNOSES", "SHORT_TITLE", "zebra fever") == "Zebra fever"


def test_a_lost_casing_takes_the_casing_most_values_follow_unless_lower_case_is_common():
    drugs = Counter({"Aloe Vesta 2-n-1 Skin Cond": 1, "Heparin": 1, "Vitamin D": 1, "Sodium chloride": 1})
    doses = Counter({"1-2": 1, "Tab": 1, "mg": 1, "tab": 1, "Cap": 1})
    index = ValueIndex({("PRESCRIPTIONS", "DRUG"): (Counter(), drugs),
                        ("PRESCRIPTIONS", "DRUG_DOSE"): (Counter(), doses)})
    # Three drugs of four in "Title Case" (each word's first letter; "2-n-1" stays as written).
    assert index.recover_value("PRESCRIPTIONS", "DRUG", "caspofungin") == "Caspofungin"
    assert index.recover_value("PRESCRIPTIONS", "DRUG", "baza 2-n-1 cream", fuzzy=False) == "Baza 2-n-1 Cream"
    assert index.recover_value("PRESCRIPTIONS", "DRUG", "tylenol (liquid)", fuzzy=False) == "Tylenol (Liquid)"
    # Doses are as often lower case as capitalised: no rule, the literal stays as written.
    assert index.recover_value("PRESCRIPTIONS", "DRUG_DOSE", "puff") == "puff"


def test_literals_snap_to_the_questions_own_words(index_files):
    index = ValueIndex.build(*index_files)
    # A drug no value source holds, copied imperfectly from the question: the question's words win.
    drug = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN PRESCRIPTIONS on '
            'DEMOGRAPHIC.HADM_ID = PRESCRIPTIONS.HADM_ID WHERE PRESCRIPTIONS."DRUG" = "{drug}"')
    question = "how many patients were prescribed clopidogrel bisulfate?"
    assert index.recover(drug.format(drug="clopidgrel bisulfte"), question) == drug.format(drug="clopidogrel bisulfate")
    # A number garbled in copying comes back from the question; one copied exactly stays.
    assert index.recover_value("DEMOGRAPHIC", "SUBJECT_ID", "3001", question="subject id 30011 ?") == "30011"
    assert index.recover_value("DEMOGRAPHIC", "AGE", "45", question="younger than 45 or 60") == "45"
    # A span that is a known value takes the stored casing.
    assert index.recover_value("DIAGNOSES", "SHORT_TITLE", "acute pancretis",
                               question="count patients with acute pancreatitis") == "Acute pancreatitis"
    # Far from every span: left as it was (no question word is near "hypertension").
    assert index.recover_value("DEMOGRAPHIC", "AGE", "45", question="how many women?") == "45"
    # Without the question, nothing question-based happens.
    assert index.recover_value("DEMOGRAPHIC", "SUBJECT_ID", "3001") == "3001"
    # Copying that stopped early: the known value the question states around it is the one meant.
    assert index.recover_value("DIAGNOSES", "SHORT_TITLE", "hypertension",
                               question="patients with hypertension nos over 60?") == "Hypertension NOS"
    # ... but a literal that is itself a known value is kept.
    assert index.recover_value("LAB", "FLUID", "blood", question="lab fluid is blood gas?") == "Blood"
    # The dataset stores some numbers as "2164.0" where the question says 2164: kept as written.
    assert index.recover_value("DEMOGRAPHIC", "DOD_YEAR", "2164.0",
                               question="year of death is less than or equal to 2164?") == "2164.0"
    # Copying that stops inside a word of the question is completed to whole words.
    assert index.recover_value("PRESCRIPTIONS", "DRUG", "zolmitriptan ora",
                               question="drug name is zolmitriptan oral tablet?") == "zolmitriptan oral"
    assert index.recover_value("PRESCRIPTIONS", "DRUG", "mitriptan oral tab",
                               question="drug name is zolmitriptan oral tablet?") == "zolmitriptan oral tablet"


CAROTID = ("Occlusion and stenosis of carotid artery without mention of cerebral infarction")
TITLE_SQL = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN DIAGNOSES on '
             'DEMOGRAPHIC.HADM_ID = DIAGNOSES.HADM_ID WHERE DEMOGRAPHIC."MARITAL_STATUS" = "DIVORCED" '
             'AND DIAGNOSES."{column}" = "{value}"')


def test_a_title_written_in_its_sibling_column_moves_to_the_column_that_holds_it(mimicsql_db, real_splits):
    index = ValueIndex.build(mimicsql_db, real_splits / "train.jsonl")
    question = f"how many divorced patients were diagnosed with {CAROTID.lower()}?"
    right = TITLE_SQL.format(column="LONG_TITLE", value=CAROTID)
    # The long title written as a short title, whole or cut short while copying: only the column and
    # the literal change in the text.
    assert index.recover(TITLE_SQL.format(column="SHORT_TITLE", value=CAROTID.lower()), question) == right
    cut = TITLE_SQL.format(column="SHORT_TITLE", value="Occlusion and stenosis of carotid artery")
    assert index.recover(cut, question) == right
    assert index.recover(cut) == cut, "cut short and no question to complete it from: left alone"


def test_a_title_the_question_states_for_the_column_written_stays_in_that_column(mimicsql_db, real_splits):
    index = ValueIndex.build(mimicsql_db, real_splits / "train.jsonl")
    question = "count the patients whose diagnoses long title is seroma complicating a procedure"
    written = TITLE_SQL.format(column="LONG_TITLE", value="seroma complicting proc")  # the short title
    assert index.recover(written, question) == TITLE_SQL.format(
        column="LONG_TITLE", value="Seroma complicating a procedure")
