"""Grounded decoding: a candidate must be inside the grammar, type-correct and name values that exist."""

from __future__ import annotations

import pytest

from medsql import grounding
from medsql.evaluation.recovery import ValueIndex
from medsql.linking import Link

COUNT = 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC'
DRUG = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN PRESCRIPTIONS on '
        'DEMOGRAPHIC.HADM_ID = PRESCRIPTIONS.HADM_ID WHERE PRESCRIPTIONS."DRUG" = "{}"')


@pytest.fixture(scope="module")
def values(mimicsql_db) -> ValueIndex:
    return ValueIndex.build(mimicsql_db)


def test_a_number_column_compared_with_text_is_a_type_error(values):
    found = grounding.problems(COUNT + ' WHERE DEMOGRAPHIC."AGE" >= "congestive heart failure"', values)
    assert found == ['DEMOGRAPHIC.AGE is a number, compared with text "congestive heart failure"']


def test_a_literal_no_column_holds_is_refused_unless_the_linker_proposed_it(values):
    assert grounding.problems(DRUG.format("Furosemide"), values) == []
    assert grounding.problems(DRUG.format("potassium chloride orally"), values) == [
        '"potassium chloride orally" is not a value of PRESCRIPTIONS.DRUG']
    proposed = Link("PRESCRIPTIONS", "DRUG", "potassium chloride orally", "x", 90.0, "fuzzy")
    assert grounding.problems(DRUG.format("potassium chloride orally"), values, [proposed]) == []


def test_sql_outside_the_grammar_does_not_qualify(values):
    assert grounding.problems("SELECT * FROM DEMOGRAPHIC UNION SELECT 1", values)[0].startswith("outside")


def test_the_best_qualifying_candidate_is_chosen_and_none_qualifying_says_why(values):
    beam = [COUNT + ' WHERE DEMOGRAPHIC."AGE" >= "old"', DRUG.format("not a drug"), DRUG.format("Furosemide")]
    assert grounding.first_grounded(grounding.check(beam, values)) == (2, [])
    chosen, why = grounding.first_grounded(grounding.check(beam[:2], values))
    assert chosen == 0 and why == ['DEMOGRAPHIC.AGE is a number, compared with text "old"']


grounding_real = grounding.query_problems


def test_each_candidate_is_checked_once_and_its_problems_kept_for_the_answer(values, monkeypatch):
    beam = [DRUG.format("not a drug"), DRUG.format("Furosemide"), DRUG.format("not a drug")]
    calls = []
    monkeypatch.setattr(grounding, "query_problems", lambda q, *a: calls.append(q) or grounding_real(q, *a))
    found = grounding.check(beam, values)
    assert len(calls) == 2 and found[0] == found[2] == ['"not a drug" is not a value of PRESCRIPTIONS.DRUG']
    assert found[1] == [] and grounding.first_grounded(found) == (1, [])


def test_a_patient_name_the_database_does_not_know_does_not_qualify(values):
    named = 'SELECT DEMOGRAPHIC."AGE" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."NAME" = "{}"'
    known = values.values("DEMOGRAPHIC", "NAME")[0]
    assert grounding.problems(named.format(known), values) == []
    assert grounding.problems(named.format("Pts With Htn Nos"), values) == [
        '"Pts With Htn Nos" is not a value of DEMOGRAPHIC.NAME']
