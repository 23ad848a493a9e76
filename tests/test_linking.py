"""The value linker on the real demo database and training literals, and the clinical lexicon."""

from __future__ import annotations

import pytest

from medsql.evaluation.recovery import ValueIndex
from medsql.linking import LEXICON, LexiconError, Linker, input_linker, linked_input, linking_recall, load_lexicon


@pytest.fixture(scope="module")
def linker(mimicsql_db, real_splits) -> Linker:
    return Linker(ValueIndex.build(mimicsql_db, real_splits / "train.jsonl"))


def found(linker: Linker, question: str) -> set[tuple[str, str, str]]:
    return {(k.table, k.column, k.value) for k in linker.link(question)}


def test_a_drug_the_question_names_is_linked_to_its_stored_spelling(linker):
    assert ("PRESCRIPTIONS", "DRUG", "Furosemide") in found(linker, "which patients were prescribed furosemide?")


def test_abbreviations_and_brand_names_are_linked_through_the_lexicon(linker):
    links = found(linker, "how many chf pts got lasix po?")
    assert ("PRESCRIPTIONS", "DRUG", "Furosemide") in links
    assert ("PRESCRIPTIONS", "ROUTE", "PO") in links
    assert ("DIAGNOSES", "SHORT_TITLE", "CHF NOS") in links
    assert ("DEMOGRAPHIC", "DISCHARGE_LOCATION", "SNF") in found(linker, "discharged to a skilled nursing facility")


@pytest.mark.parametrize("question, link", [
    ("how many pts got ambien?", ("PRESCRIPTIONS", "DRUG", "Zolpidem Tartrate")),
    ("count patients on percocet", ("PRESCRIPTIONS", "DRUG", "Oxycodone-Acetaminophen")),
    ("pts who had a flu shot", ("PRESCRIPTIONS", "DRUG", "Influenza Virus Vaccine")),
    ("how many patients with gerd", ("DIAGNOSES", "SHORT_TITLE", "Esophageal reflux")),
    ("number of smokers", ("DIAGNOSES", "LONG_TITLE", "Tobacco use disorder")),
    ("how many patients had an art line", ("PROCEDURES", "SHORT_TITLE", "Arterial catheterization")),
    ("how many had an lp", ("PROCEDURES", "SHORT_TITLE", "Spinal tap")),
])
def test_brand_names_lay_terms_and_abbreviations_of_lexicon_version_2_are_linked(linker, question, link):
    assert link in found(linker, question)


def test_the_words_people_use_find_an_abbreviated_dictionary_title(linker):
    links = found(linker, "count patients with a urinary tract infection")
    assert ("DIAGNOSES", "SHORT_TITLE", "Urin tract infection NOS") in links
    assert ("DIAGNOSES", "LONG_TITLE", "Urinary tract infection, site not specified") in links


def test_a_long_title_stated_in_full_is_the_first_candidate_not_its_sibling_with_the_same_content_words(linker):
    # 12 words, past the old 10-word span; "with cerebral infarction" has the same content words.
    question = ("how many divorced patients were diagnosed with occlusion and stenosis of carotid artery "
                "without mention of cerebral infarction?")
    first = next(k for k in linker.link(question) if k.column == "LONG_TITLE")
    assert (first.value, first.source) == (
        "Occlusion and stenosis of carotid artery without mention of cerebral infarction", "exact")
    fuzzy = linker.link("occlusion stenosis carotid artery, without mention of cerebral infarction")
    titles = [k.value for k in fuzzy if k.column == "LONG_TITLE"]
    assert titles.index("Occlusion and stenosis of carotid artery without mention of cerebral infarction") < \
        titles.index("Occlusion and stenosis of carotid artery with cerebral infarction")


@pytest.mark.parametrize("question, link", [
    ("how many unmarried patients are on medicaid?", ("DEMOGRAPHIC", "MARITAL_STATUS", "SINGLE")),
    ("count the widows admitted in 2150", ("DEMOGRAPHIC", "MARITAL_STATUS", "WIDOWED")),
])
def test_marital_words_of_lexicon_version_4_are_linked(linker, question, link):
    assert link in found(linker, question)


def test_a_lexicon_phrase_is_not_linked_by_its_single_words(linker):
    links = found(linker, "how many patients with high blood pressure are on medicare?")
    assert not any(column == "FLUID" for _, column, _ in links), "'blood' of 'high blood pressure' is no lab fluid"
    assert ("DEMOGRAPHIC", "INSURANCE", "Medicare") in links


def test_codes_are_linked_only_when_the_question_speaks_of_a_code(linker):
    assert ("DIAGNOSES", "ICD9_CODE", "4019") in found(linker, "patients whose icd9 code is 4019")
    assert not any(c == "ICD9_CODE" for _, c, _ in found(linker, "patients older than 4019"))


def test_one_phrase_names_one_value_so_a_word_inside_a_longer_linked_value_is_not_linked(linker):
    links = found(linker, "how many patients whose diagnoses short title is cl skul base fx-coma nos?")
    assert ("DIAGNOSES", "SHORT_TITLE", "Cl skul base fx-coma NOS") in links
    assert not any(column == "DRUG_TYPE" for _, column, _ in links), "'base' is part of the diagnosis"


def test_a_one_word_value_is_linked_only_when_stated_whole(linker):
    assert ("LAB", "LABEL", "Young") not in found(linker, "age of the youngest female pt")
    assert ("DEMOGRAPHIC", "ADMISSION_TYPE", "URGENT") in found(linker, "how many urgent admissions?")


def test_the_model_input_links_only_what_the_database_holds(mimicsql_db, real_splits):
    values = ValueIndex.build(mimicsql_db, real_splits / "train.jsonl")
    database = values.database_only()
    # A patient the training split names but the demo database does not hold.
    name = next(v for v in values.values("DEMOGRAPHIC", "NAME") if database.holds("DEMOGRAPHIC", "NAME", v) is False)
    question = f"how many patients named {name.lower()}?"
    assert ("DEMOGRAPHIC", "NAME", name) in found(Linker(values), question)
    assert not any(column == "NAME" for _, column, _ in found(input_linker(values), question))
    assert ("PRESCRIPTIONS", "DRUG", "Furosemide") in found(input_linker(values), "pts on lasix")


def test_links_render_as_the_model_input_tail(linker):
    text = linked_input("translate to SQL: patients on lasix", linker.link("patients on lasix"), 1)
    assert text == "translate to SQL: patients on lasix | prescriptions.drug: furosemide"
    assert linked_input("q", [], 4) == "q"


def test_recall_on_gold_literals_is_reported_per_wording(linker, real_splits):
    import json

    rows = [json.loads(line) for line in (real_splits / "validation.jsonl").read_text().splitlines()]
    recall = linking_recall(linker, rows)
    assert set(recall) >= {"all", "template", "natural", "natural_v2"}
    assert recall["template"]["recall"] > 0.8 and recall["all"]["gold_literals"] > 50


def test_the_lexicon_is_a_versioned_data_file_that_reads(tmp_path):
    terms = load_lexicon(LEXICON)
    assert len(terms) > 100
    bad = tmp_path / "lexicon.yaml"
    bad.write_text("version: 1\nterms:\n  - {says: [lasix], links: {PRESCRIPTIONS.NOPE: Furosemide}}\n")
    with pytest.raises(LexiconError, match=r"lexicon.yaml: terms\[1\]: PRESCRIPTIONS.NOPE"):
        load_lexicon(bad)
