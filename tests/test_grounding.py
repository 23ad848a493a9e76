"""Grounded decoding: a candidate must be inside the grammar, type-correct and name values that exist."""

from __future__ import annotations

import pytest

from medsql import grounding
from medsql.evaluation.recovery import ValueIndex
from medsql.linking import Link
from medsql.sqlform import Condition, Query, parse_sql

COUNT = 'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC'
DRUG = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN PRESCRIPTIONS on '
        'DEMOGRAPHIC.HADM_ID = PRESCRIPTIONS.HADM_ID WHERE PRESCRIPTIONS."DRUG" = "{}"')


@pytest.fixture(scope="module")
def values(mimicsql_db) -> ValueIndex:
    return ValueIndex.build(mimicsql_db)


def test_a_number_column_compared_with_text_is_a_type_error(values):
    found = grounding.problems(COUNT + ' WHERE DEMOGRAPHIC."AGE" >= "congestive heart failure"', values)
    assert found == ['DEMOGRAPHIC.AGE is a number, compared with text "congestive heart failure"']


def test_an_identifier_compared_with_a_name_is_a_type_error(values):
    # The second ensemble member once wrote a patient's name as the subject id.
    names = 'SELECT DEMOGRAPHIC."DAYS_STAY" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."{}" = "{}"'
    assert grounding.problems(names.format("SUBJECT_ID", "elizabeth bateman"), values) == [
        'DEMOGRAPHIC.SUBJECT_ID is an identifier (a whole number), compared with "elizabeth bateman"']
    assert grounding.problems(names.format("SUBJECT_ID", "2560"), values) == []


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


def test_a_query_selecting_one_column_twice_does_not_qualify(values):
    twice = 'SELECT DEMOGRAPHIC."AGE",DEMOGRAPHIC."AGE" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."SUBJECT_ID" = "10019"'
    assert grounding.problems(twice, values) == ["selects DEMOGRAPHIC.AGE twice"]
    assert grounding.problems(twice.replace('"AGE",', '"GENDER",'), values) == []


@pytest.mark.parametrize(("question", "number", "stated"), [
    ("how many pts over 65?", "65", (">", "over 65")),
    ("female patients 65 or older", "65", (">", "65 or older")),
    ("patients aged 65 and over", "65", (">", "65 and over")),
    ("age less than or equal to 43", "43", ("<", "less than or equal to 43")),
    ("who stayed no more than 3 days", "3", ("<", "no more than 3")),
    ("admitted before 2150 and younger than 40", "2150", ("<", "before 2150")),
    ("admitted before 2150 and younger than 40", "40", ("<", "younger than 40")),
    ("died in 2164 or later", "2164.0", (">", "2164 or later")),
    ("what is the age of subject id 2110?", "2110", None),
    ("patients aged 65", "65", None),
    ("over 60 or under 60", "60", None),  # both ways: no single bound
])
def test_the_bound_a_question_states_for_a_number_is_read(question, number, stated):
    assert grounding.stated_comparison(question, number) == stated


def test_a_comparison_the_other_way_than_the_question_says_does_not_qualify(values):
    asked = "how many patients are over 65?"
    under, over = COUNT + ' WHERE DEMOGRAPHIC."AGE" < "65"', COUNT + ' WHERE DEMOGRAPHIC."AGE" >= "65"'
    found = grounding.check([under, over], values, question=asked)
    assert found == [['the question says "over 65", the query DEMOGRAPHIC.AGE < 65'], []]
    assert grounding.first_grounded(found) == (1, [])
    # Equality where the question bounds the number is the other way too; a question without a bound
    # leaves every operator to the model.
    assert grounding.problems(COUNT + ' WHERE DEMOGRAPHIC."AGE" = "65"', values, question=asked)
    assert grounding.problems(under, values, question="how many patients aged 65?") == []


@pytest.mark.parametrize("table", ["_AGE", "_STAY", "_YEAR"])
def test_every_comparison_the_augmentation_writes_is_read_back_the_way_its_operator_goes(table):
    from medsql import augment

    for op, phrasings in getattr(augment, table).items():
        for phrasing in phrasings:
            question = "how many patients " + phrasing.format(n="47", what="admitted")
            stated = grounding.stated_comparison(question, "47")
            assert (stated and stated[0]) == grounding.DIRECTION.get(op), (op, question, stated)


AGED = COUNT + ' WHERE DEMOGRAPHIC."GENDER" = "F" AND DEMOGRAPHIC."AGE" > "80"'


def test_a_query_that_leaves_out_a_value_the_question_names_does_not_qualify(values):
    from medsql.linking import Linker

    question = "how many female medicare pts over 80?"
    links = Linker(values).link(question)
    insured = AGED + ' AND DEMOGRAPHIC."INSURANCE" = "Medicare"'
    found = grounding.check([AGED, insured], values, links, question)
    assert found == [['the question names "medicare" (DEMOGRAPHIC.INSURANCE = Medicare), which the query '
                      'leaves out'], []]
    assert grounding.first_grounded(found) == (1, [])


def test_a_mention_is_used_by_its_column_its_words_in_a_literal_or_a_longer_used_mention():
    died = [Link("DEMOGRAPHIC", "EXPIRE_FLAG", "1", "died", 99.0, "lexicon"),
            Link("DEMOGRAPHIC", "DISCHARGE_LOCATION", "DEAD/EXPIRED", "died", 99.0, "lexicon")]
    flag = Link("LAB", "FLAG", "abnormal", "abnormal", 100.0, "exact")
    heart = [Link("DIAGNOSES", "SHORT_TITLE", "CHF NOS", "congestive heart failure", 98.0, "lexicon"),
             Link("DIAGNOSES", "SHORT_TITLE", "Heart failure NOS", "heart failure", 97.0, "exact")]
    theophylline = Link("PRESCRIPTIONS", "DRUG", "Theophylline SR", "theophylline", 100.0, "exact")
    guessed = Link("DEMOGRAPHIC", "DIAGNOSIS", "SEPSIS", "sepsis", 80.0, "fuzzy")

    def left(where: str, links: list[Link]) -> list[str]:
        column, op, value = where.split(" ", 2)
        table, _, name = column.partition(".")
        query = Query(parse_sql(COUNT + ' WHERE DEMOGRAPHIC."AGE" > "1"').select, [Condition(table, name, op, value)])
        return [k.span for k in grounding.left_out(query, links)]

    # "died before 2150" asks when: the year of death uses it, as whether (EXPIRE_FLAG) would.
    assert left("DEMOGRAPHIC.DOD_YEAR < 2150.0", died) == []
    assert left("DEMOGRAPHIC.AGE < 50", died) == ["died"]
    # "lab test abnormal status is delta": the mention names the column, whose value is another.
    assert left("LAB.FLAG = delta", [flag]) == []
    # The question's words within the literal, or the value's own; a mention inside a used one.
    assert left("DIAGNOSES.LONG_TITLE = Congestive heart failure, unspecified", heart) == []
    assert left("PRESCRIPTIONS.DRUG = Theophylline", [theophylline]) == []
    # ... but not a longer mention around a used one: "congestive" was said, and the query drops it.
    assert left("DIAGNOSES.LONG_TITLE = Heart failure", heart) == ["congestive heart failure"]
    # A fuzzy guess is no mention: leaving it out is no problem.
    assert left("DEMOGRAPHIC.AGE < 50", [guessed]) == []


def test_a_query_that_leaves_out_a_number_the_question_says_does_not_qualify(values):
    question = "female pts over 80 who died in 2138 - how many?"
    kept = AGED + ' AND DEMOGRAPHIC."DOD_YEAR" = "2138.0"'
    dropped = COUNT + ' WHERE DEMOGRAPHIC."GENDER" = "F" AND DEMOGRAPHIC."DOD_YEAR" = "2138.0"'
    assert grounding.check([dropped, kept], values, question=question) == [
        ['the question says "80", which the query leaves out'], []]
    # A number inside a date literal is used; one inside a value the question names is no number of its own.
    assert grounding.numbers_left_out(parse_sql(
        COUNT.replace("FROM DEMOGRAPHIC", 'FROM DEMOGRAPHIC INNER JOIN LAB on DEMOGRAPHIC.HADM_ID = LAB.HADM_ID')
        + ' WHERE LAB."CHARTTIME" = "2120-04-16 13:27:00"'), "how many had a lab test at 2120-04-16 13:27:00?") == []
    diabetes = Link("DIAGNOSES", "SHORT_TITLE", "DMII wo cmp nt st uncntr", "type 2 diabetes", 99.0, "lexicon")
    assert grounding.numbers_left_out(parse_sql(AGED), "female type 2 diabetes pts over 80", [diabetes]) == []


def test_a_column_set_equal_to_two_values_does_not_qualify(values):
    both = COUNT + ' WHERE DEMOGRAPHIC."DISCHARGE_LOCATION" = "HOME" AND DEMOGRAPHIC."DISCHARGE_LOCATION" = "SNF"'
    assert grounding.problems(both, values) == ['DEMOGRAPHIC.DISCHARGE_LOCATION cannot be both "HOME" and "SNF"']
    assert grounding.problems(COUNT + ' WHERE DEMOGRAPHIC."AGE" > "20" AND DEMOGRAPHIC."AGE" < "40"', values) == []


def _mended(sql: str, values: ValueIndex, links: list[Link], question: str) -> list[tuple[str, list[str]]]:
    from medsql.sqlform import render_sql

    found = grounding.mended(parse_sql(sql), values, links, question)
    return [] if found is None else [(render_sql(found[0]), found[1])]


FUROSEMIDE = Link("PRESCRIPTIONS", "DRUG", "Furosemide", "furosemide", 100.0, "exact")
MEDICARE = Link("DEMOGRAPHIC", "INSURANCE", "Medicare", "medicare", 100.0, "exact")


def test_a_literal_copied_with_the_words_after_the_value_is_mended_to_the_value(values):
    question = "how many pts got furosemide doses"
    assert _mended(DRUG.format("Furosemide Doses Did"), values, [FUROSEMIDE], question) == [
        (DRUG.format("Furosemide"),
         ['PRESCRIPTIONS.DRUG = "Furosemide" (the question\'s "furosemide"), '
          'for PRESCRIPTIONS.DRUG = "Furosemide Doses Did"'])]
    # A value inside the literal but not at its start says nothing about what the literal meant.
    assert _mended(DRUG.format("Oral Furosemide Doses"), values, [FUROSEMIDE], question) == []
    # Without a linked value the model's spelling stays: nothing is dropped or guessed.
    assert _mended(DRUG.format("Furosemide Doses Did"), values, [], question) == []


def test_a_value_written_under_the_wrong_column_is_moved_to_its_own(values):
    wrong = COUNT + ' WHERE DEMOGRAPHIC."DISCHARGE_LOCATION" = "MEDICARE" AND DEMOGRAPHIC."AGE" > "80"'
    right = COUNT + ' WHERE DEMOGRAPHIC."INSURANCE" = "Medicare" AND DEMOGRAPHIC."AGE" > "80"'
    assert _mended(wrong, values, [MEDICARE], "how many medicare pts over 80") == [
        (right, ['DEMOGRAPHIC.INSURANCE = "Medicare" (the question\'s "medicare"), '
                 'for DEMOGRAPHIC.DISCHARGE_LOCATION = "MEDICARE"'])]


def test_a_copy_of_a_value_another_condition_sets_is_dropped(values):
    twice = DRUG.format("Furosemide") + ' AND DEMOGRAPHIC."DISCHARGE_LOCATION" = "FUROSEMIDE"'
    assert _mended(twice, values, [FUROSEMIDE], "how many pts got furosemide") == [
        (DRUG.format("Furosemide"),
         ['dropped DEMOGRAPHIC.DISCHARGE_LOCATION = "FUROSEMIDE": the question\'s "furosemide" is '
          'PRESCRIPTIONS.DRUG, which the query sets already'])]


def test_an_identifier_written_with_the_words_after_it_is_mended_to_the_number_the_question_says(values):
    days = 'SELECT DEMOGRAPHIC."DAYS_STAY" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."SUBJECT_ID" = "{}"'
    assert _mended(days.format("2560's"), values, [], "what was pt 2560's length of stay") == [
        (days.format("2560"), ['DEMOGRAPHIC.SUBJECT_ID = 2560, for "2560\'s"'])]
    # A number the question does not say is no reading of it.
    assert _mended(days.format("2561's"), values, [], "what was pt 2560's length of stay") == []


def test_a_comparison_the_other_way_is_turned_as_the_question_says_it(values):
    below = COUNT + ' WHERE DEMOGRAPHIC."AGE" < "75"'
    assert _mended(below, values, [], "count pts aged 75 and up") == [
        (COUNT + ' WHERE DEMOGRAPHIC."AGE" >= "75"', ['DEMOGRAPHIC.AGE >= 75, as the question says "75 and up"'])]
    assert _mended(below, values, [], "count pts over 75") == [
        (COUNT + ' WHERE DEMOGRAPHIC."AGE" > "75"', ['DEMOGRAPHIC.AGE > 75, as the question says "over 75"'])]


@pytest.mark.parametrize("question, number, operator", [
    ("pts over 65", "65", ">"), ("pts 65 or older", "65", ">="), ("pts aged 75 and up", "75", ">="),
    ("at least 65 years old", "65", ">="), ("under 65", "65", "<"), ("stayed no more than 3 days", "3", "<="),
    ("year of death is less than or equal to 2131", "2131", "<="), ("born after 2100", "2100", ">"),
    ("aged 65", "65", None)])
def test_the_operator_a_question_states_for_a_number_takes_the_number_itself_or_not(question, number, operator):
    stated = grounding.stated_operator(question, number)
    assert (stated and stated[0]) == operator


def test_a_value_the_question_names_and_the_query_leaves_out_is_added(values):
    from medsql.linking import Linker

    question = "how many female medicare pts over 80?"
    assert _mended(AGED, values, Linker(values).link(question), question) == [
        (AGED + ' AND DEMOGRAPHIC."INSURANCE" = "Medicare"',
         ['added DEMOGRAPHIC.INSURANCE = "Medicare" (the question\'s "medicare")'])]


def test_only_mended_versions_that_qualify_are_offered(values):
    # The type error has no number in it to read: mending the rest would still not qualify.
    broken = DRUG.format("Furosemide Doses") + ' AND DEMOGRAPHIC."AGE" > "old"'
    assert _mended(broken, values, [FUROSEMIDE], "how many old pts got furosemide") == []
    # A qualifying candidate reads as itself: nothing to mend.
    assert _mended(DRUG.format("Furosemide"), values, [FUROSEMIDE], "how many pts got furosemide") == []


def listing(*columns: str) -> str:
    """The SQL of a query listing TABLE.COLUMNs of subject 24425."""
    from medsql.sqlform import render_sql

    return render_sql(Query([(None, *c.split(".")) for c in columns],
                            [Condition("PROCEDURES", "SUBJECT_ID", "=", "24425")]))


def test_a_query_that_leaves_out_a_column_the_question_asks_about_does_not_qualify(values):
    question = "what is procedure short title and drug code of subject id 24425?"
    wrong = parse_sql(listing("PROCEDURES.SHORT_TITLE", "PROCEDURES.LONG_TITLE"))
    assert grounding.columns_left_out(wrong, question) == [("PRESCRIPTIONS", "FORMULARY_DRUG_CD", "drug code")]
    assert grounding.problems(listing("PROCEDURES.SHORT_TITLE", "PROCEDURES.LONG_TITLE"), values, [], question) == [
        'the question asks about the drug code (PRESCRIPTIONS.FORMULARY_DRUG_CD), which the query leaves out']
    right = listing("PROCEDURES.SHORT_TITLE", "PRESCRIPTIONS.FORMULARY_DRUG_CD")
    assert grounding.problems(right, values, [], question) == []
    # A column compared is used as well as one listed; a title is the diagnoses' or the procedures' as
    # the question says, or else as the query's one dictionary table.
    compared = parse_sql(DRUG.format("Furosemide"))
    assert grounding.columns_left_out(compared, "how many patients with drug name furosemide by route iv?") == [
        ("PRESCRIPTIONS", "ROUTE", "route")]
    titles = parse_sql('SELECT DIAGNOSES."LONG_TITLE" FROM DIAGNOSES WHERE DIAGNOSES."SUBJECT_ID" = "1"')
    assert grounding.columns_left_out(titles, "what is the long title of subject id 1?") == []
    assert grounding.columns_left_out(titles, "what is the procedure long title of subject id 1?") == [
        ("PROCEDURES", "LONG_TITLE", "long title")]
    # A drug named as the drug name, and read as a lab test, is left out.
    lab = parse_sql('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC INNER JOIN LAB on '
                    'DEMOGRAPHIC.HADM_ID = LAB.HADM_ID WHERE LAB."LABEL" = "Theophylline"')
    assert grounding.columns_left_out(lab, "how many female patients with a drug name theophylline sr?") == [
        ("PRESCRIPTIONS", "DRUG", "drug name")]
    assert grounding.columns_left_out(lab, "how many patients had a theophylline lab test?") == []
    # A code named with its table is that table's code.
    coded = parse_sql('SELECT DIAGNOSES."ICD9_CODE" FROM DIAGNOSES WHERE DIAGNOSES."SUBJECT_ID" = "1"')
    assert grounding.columns_left_out(coded, "what is the procedure icd9 code of subject id 1?") == [
        ("PROCEDURES", "ICD9_CODE", "procedure icd9 code")]
    assert grounding.columns_left_out(coded, "what is the diagnosis icd9 code of subject id 1?") == []


def test_the_phrases_for_columns_mean_those_columns_in_the_training_split(training_queries):
    flagged = [row["question"] for row, query in training_queries
               if grounding.columns_left_out(query, row["question"])]
    total = len(training_queries)
    # The gold queries use the columns their questions name: but for the dataset's own slips.
    assert total > 1000 and len(flagged) <= total // 1000, flagged


def test_a_column_asked_about_takes_the_place_of_one_listed_twice_or_not_asked_for(values):
    question = "what is procedure short title and drug code of subject id 24425?"
    right = listing("PROCEDURES.SHORT_TITLE", "PRESCRIPTIONS.FORMULARY_DRUG_CD")
    assert _mended(listing("PROCEDURES.SHORT_TITLE", "PROCEDURES.LONG_TITLE"), values, [], question) == [
        (right, ['selected PRESCRIPTIONS.FORMULARY_DRUG_CD (the question\'s "drug code") for PROCEDURES.LONG_TITLE'])]
    twice = listing("PROCEDURES.SHORT_TITLE", "PROCEDURES.SHORT_TITLE")
    assert _mended(twice, values, [], question) == [
        (right, ['selected PRESCRIPTIONS.FORMULARY_DRUG_CD (the question\'s "drug code") for PROCEDURES.SHORT_TITLE'])]
    # Listed in the schema's order; a column only said of the patients ("whose insurance is") is no
    # column asked for, nor does a count list columns.
    one = 'SELECT DEMOGRAPHIC."{}" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."SUBJECT_ID" = "2560"'
    assert _mended(one.format("DIAGNOSIS"), values, [], "what is the days of hospital stay and primary disease "
                   "of subject id 2560?") == [
        ('SELECT DEMOGRAPHIC."DAYS_STAY",DEMOGRAPHIC."DIAGNOSIS" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."SUBJECT_ID" = '
         '"2560"', ['selected DEMOGRAPHIC.DAYS_STAY too (the question\'s "days of hospital stay")'])]
    assert _mended(COUNT, values, [], "how many patients whose insurance is private?") == []
    assert _mended(COUNT + ' WHERE DEMOGRAPHIC."AGE" < "60"', values, [], "count by religion pts under 60") == []
