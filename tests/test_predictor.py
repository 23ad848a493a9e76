"""The Predictor: answers, the same answer batched or alone, and clear errors on bad input or settings.

Most tests use a tiny untrained model folder built here in a second (`untrained_model`): its
answers are nonsense, but they are the model's, so they show whether batching, beams and input
checks change them. The `slow` test compares batched and lone answers of a trained model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medsql.predictor import MAX_BEAMS, Predictor, PredictorError
from medsql.sqlform import parse_sql, sql_to_compact
from medsql.text import MAX_QUESTION_CHARS, QuestionError

# Questions of different lengths, so a batch of them is padded.
QUESTIONS = [
    "how many patients are over 65?",
    "count female patients",
    "what is the average age of patients admitted in an emergency whose primary disease is sepsis?",
    "list the drugs prescribed to patients with congestive heart failure",
    "how many male patients are married?",
    "give me the number of patients whose diagnoses long title is oliguria and anuria?",
    "average age",
    "what are the names of female patients older than 65 who were admitted through the emergency room?",
]
TINY_SHAPE = {"vocab_size": 600, "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1,
              "dropout": 0.0, "copy_mechanism": True}
SQL = [
    'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."AGE" > "65"',
    'SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."GENDER" = "F"',
    'SELECT AVG ( DEMOGRAPHIC."AGE" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."ADMISSION_TYPE" = "EMERGENCY"',
]


def untrained_model(folder: Path, seed: int = 1, num_beams: int = 2, saved_max_length: int | None = None,
                    db: Path | None = None) -> Path:
    """A medsql model folder as the train stage writes it, with a tiny T5 (copy head) at initial weights
    (seed 1 answers the test questions in several different ways).

    `saved_max_length` writes a max_length into generation_config.json, as training can; `db`
    ships a value index built from that database (values.json).
    """
    import torch

    from medsql import modeling
    from medsql.config import EmbeddedModel
    from medsql.evaluation.recovery import ValueIndex

    texts = [f"translate to SQL: {q}" for q in QUESTIONS] + [sql_to_compact(s) for s in SQL] * 3
    torch.manual_seed(seed)
    tokenizer = modeling.train_tokenizer(texts, TINY_SHAPE["vocab_size"])
    model = modeling.build_scratch_model(tokenizer, EmbeddedModel(**TINY_SHAPE))
    if saved_max_length:
        model.generation_config.max_length = saved_max_length
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    meta = {"name": f"untrained-{seed}", "profile": "embedded", "target_form": "compact",
            "task_prefix": "translate to SQL: ", "schema_context": False, "lowercase_questions": True,
            "num_beams": num_beams, "max_input_tokens": 64, "max_target_tokens": 20, "base_model": None}
    (folder / "medsql.json").write_text(json.dumps(meta, indent=2) + "\n")
    if db is not None:
        ValueIndex.build(db).save(folder / "values.json")
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_demo_api import build_tiny_db

    root = tmp_path_factory.mktemp("untrained")
    return untrained_model(root / "model", db=build_tiny_db(root / "mimicsql.db"))


@pytest.fixture(scope="module")
def predictor(tiny_model: Path) -> Predictor:
    return Predictor(tiny_model)


@pytest.mark.parametrize("question, phrase", [
    ("   ", "empty"),
    ("x" * (MAX_QUESTION_CHARS + 1), f"the limit is {MAX_QUESTION_CHARS}"),
    ("how many \ud800 patients?", "lone surrogate U+D800"),
    ("count\x00 patients", "control character (U+0000"),
    ("count \u200b patients", "control character (U+200B"),
    (b"how many \xff patients", "not valid UTF-8"),
    (42, "must be text"),
])
def test_refused_questions_are_clear_errors(predictor: Predictor, question, phrase: str) -> None:
    with pytest.raises(QuestionError, match=re.escape(phrase)):
        predictor.predict([question])


def test_a_refused_question_in_a_batch_is_named(predictor: Predictor) -> None:
    with pytest.raises(QuestionError, match="question 2 of 3: the question is empty"):
        predictor.predict(["how many patients?", " ", "count patients"])


def test_longest_allowed_question_is_answered(predictor: Predictor) -> None:
    assert isinstance(predictor.predict(["y" * MAX_QUESTION_CHARS])[0], str)


@pytest.mark.parametrize("beams", [-1, 0, MAX_BEAMS + 1, 5000, 2.5, True, "4"])
def test_beams_outside_1_to_16_are_refused(predictor: Predictor, beams) -> None:
    # Before the fix -1 crashed inside transformers, 0 silently became the model's 2, and 5000
    # ran for minutes on gigabytes.
    with pytest.raises(PredictorError, match="number of beams"):
        predictor.predict(["how many patients?"], num_beams=beams)


def test_every_beam_size_from_1_to_16_is_accepted(predictor: Predictor) -> None:
    for beams in (1, MAX_BEAMS):
        assert isinstance(predictor.predict(["how many patients?"], num_beams=beams)[0], str)


@pytest.mark.parametrize("beams", [None, 1, 4])
def test_batched_answers_equal_one_at_a_time(predictor: Predictor, beams) -> None:
    alone = [predictor.predict([q], num_beams=beams)[0] for q in QUESTIONS]
    assert predictor.predict(QUESTIONS, num_beams=beams) == alone
    assert predictor.predict(QUESTIONS, num_beams=beams, batch_size=3) == alone
    assert len(set(alone)) > 1, "the test model should not answer every question alike"


def test_generation_settings_are_set_once_and_nothing_is_warned_per_batch(tmp_path: Path, capfd) -> None:
    # A max_length saved with the model (training writes one) made transformers warn "Both
    # `max_new_tokens` and `max_length` seem to have been set" on every batch.
    predictor = Predictor(untrained_model(tmp_path / "model", saved_max_length=64))
    settings = predictor.model.generation_config
    assert settings.max_new_tokens == predictor.meta["max_target_tokens"]
    assert settings.num_beams == predictor.meta["num_beams"] and settings.max_length is None
    capfd.readouterr()
    for beams in (None, 1, 3):
        predictor.predict(QUESTIONS[:3], num_beams=beams)
    logged = capfd.readouterr()
    assert "seem to have been set" not in logged.err + logged.out
    assert "generation_config" not in logged.err + logged.out  # nor the "passing both" deprecation


def test_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="does not exist"):
        Predictor.load(str(tmp_path / "nowhere"))
    with pytest.raises(PredictorError, match="not a medsql model folder"):
        Predictor(tmp_path)


def test_compact_output_gets_stored_casing_back(predictor: Predictor) -> None:
    assert predictor.values is not None
    sql = predictor.to_sql('count_distinct demographic.subject_id where demographic.gender = " f " '
                           'and demographic.admission_type = " emergency "')
    assert parse_sql(sql).conditions[0].value == "F"
    assert parse_sql(sql).conditions[1].value == "EMERGENCY"


def test_columns_the_model_lists_out_of_the_schemas_order_are_put_in_it(predictor: Predictor) -> None:
    sql = predictor.to_sql('demographic.diagnosis , demographic.days_stay where demographic.subject_id = " 2560 "')
    assert [c for _, _, c in parse_sql(sql).select] == ["DAYS_STAY", "DIAGNOSIS"]


def test_a_subject_id_condition_the_model_sets_on_another_table_is_set_where_the_dataset_sets_it(
        predictor: Predictor) -> None:
    sql = predictor.to_sql('procedures.long_title , prescriptions.icustay_id '
                           'where prescriptions.subject_id = " 74032 "')
    assert [(c.table, c.column) for c in parse_sql(sql).conditions] == [("PROCEDURES", "SUBJECT_ID")]


def test_pretty_formats_with_sqlparse() -> None:
    pretty = Predictor.pretty('select count ( distinct DEMOGRAPHIC."SUBJECT_ID" ) from DEMOGRAPHIC where '
                              'DEMOGRAPHIC."AGE" < "45"')
    assert pretty.splitlines()[0].startswith("SELECT COUNT")
    assert "\nFROM DEMOGRAPHIC" in pretty and "\nWHERE" in pretty


def test_model_folder_metadata_round_trips(tiny_model: Path) -> None:
    meta = json.loads((tiny_model / "medsql.json").read_text())
    assert Predictor(tiny_model).meta == meta


@pytest.mark.slow
def test_trained_model_answers_alike_batched_or_alone(request) -> None:
    """The pipeline's trained model (else one the train stage trains briefly here) on held-out
    questions: a padded batch of 16 gives each question the SQL it gets alone."""
    from medsql import paths
    from medsql.util import read_jsonl

    if (paths.MODEL / "medsql.json").is_file():
        predictor = Predictor(paths.MODEL)
        split = paths.SPLITS / "test.jsonl"
    else:
        model_dir = request.getfixturevalue("briefly_trained_model")
        predictor, split = Predictor(model_dir), model_dir.parent.parent / "data" / "splits" / "test.jsonl"
    questions = [r["question"] for r in read_jsonl(split)][::20][:32]
    alone = [predictor.predict([q])[0] for q in questions]
    assert predictor.predict(questions, batch_size=16) == alone


def test_linked_candidates_join_the_model_input_as_training_wrote_them(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from medsql.train import with_links

    folder = tmp_path / "linked"
    shutil.copytree(tiny_model, folder)
    meta = json.loads((folder / "medsql.json").read_text())
    (folder / "medsql.json").write_text(json.dumps(meta | {"link_candidates": 2}))
    linked, plain = Predictor(folder), Predictor(tiny_model)
    question = "How many pts on lasix came in through the ER?"
    text = linked.model_inputs([question])[0]
    assert text.startswith(plain.model_inputs([question])[0])
    assert " | prescriptions.drug: furosemide" in text  # the lexicon's "lasix", in the stored value
    assert " | demographic.admission_location: emergency room admit" in text
    assert text.count(" | ") == 2
    # The train stage appends the same candidates to the same question's input.
    row = {"question": question, "input": plain.model_inputs([question])[0]}
    assert with_links([[row]], linked.values, 2)[0][0]["input"] == text
    assert linked.answer([question])[0].sql  # and the model reads it


def test_a_condition_the_model_writes_twice_is_read_once(predictor: Predictor) -> None:
    sql = predictor.to_sql('count_distinct demographic.subject_id where demographic.admityear < " 2110 " '
                           'and demographic.admityear < " 2110 "')
    assert [c.value for c in parse_sql(sql).conditions] == ["2110"]


# ---- ensembles -----------------------------------------------------------------------------------


def taught_model(folder: Path, seed: int, num_beams: int, steps: int = 60) -> Path:
    """A tiny model folder (`untrained_model`) taught in a few seconds to answer the test questions
    with the test SQL: its outputs end, as a trained model's do (an untrained one runs to the length
    limit), and the seed makes each one's lesser candidates its own."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from medsql.modeling import target_ids

    untrained_model(folder, seed=seed, num_beams=num_beams)
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer([f"translate to SQL: {q}" for q in QUESTIONS], return_tensors="pt", padding=True)
    ids = target_ids(tokenizer, [sql_to_compact(SQL[i % len(SQL)]) for i in range(len(QUESTIONS))], True, 20)
    labels = torch.full((len(ids), max(map(len, ids))), -100)
    for row, label in enumerate(ids):
        labels[row, :len(label)] = torch.tensor(label)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    return folder


def ensemble_of(folder: Path, seeds: tuple[int, ...] = (1, 2), num_beams: int = 3) -> Path:
    """A model folder as the train stage writes it with train.ensemble_members: the first seed's model
    at the top, each further one in members/seed-<seed>/, named in medsql.json's `members`."""
    taught_model(folder, seeds[0], num_beams)
    folders = [f"members/seed-{seed}" for seed in seeds[1:]]
    for seed, member in zip(seeds[1:], folders, strict=True):
        taught_model(folder / member, seed, num_beams)
    meta = json.loads((folder / "medsql.json").read_text())
    (folder / "medsql.json").write_text(json.dumps(meta | {"members": folders}, indent=2) + "\n")
    return folder


def _mean_log_probability(model, tokenizer, text: str, output: str) -> float:
    """The log-probability per token of one output, from the model's own loss (mean negative log-likelihood)."""
    import torch

    from medsql.modeling import target_ids

    inputs = tokenizer([text], return_tensors="pt")
    labels = torch.tensor(target_ids(tokenizer, [output], True, 64))
    with torch.inference_mode():
        return -float(model(**inputs, labels=labels).loss)


def test_an_ensemble_pools_its_members_beams_and_ranks_each_candidate_by_their_mean_log_probability(
        tmp_path: Path) -> None:
    ensemble = Predictor(ensemble_of(tmp_path / "model"))
    assert len(ensemble.members) == 2
    texts = ensemble.model_inputs(QUESTIONS)
    beams = [ensemble._beam_search(member, texts, None, 32) for member in range(2)]
    pooled = ensemble.candidates(QUESTIONS)
    assert any(len(candidates) > 3 for candidates in pooled), "the members should propose different outputs"
    for text, candidates, first, second in zip(texts, pooled, beams[0], beams[1], strict=True):
        outputs = [output for output, _ in candidates]
        assert sorted(outputs) == sorted({output for output, _ in first + second})  # each output once
        scores = [score for _, score in candidates]
        assert scores == sorted(scores, reverse=True)
        for output, score in candidates:
            each = [_mean_log_probability(model, tokenizer, text, output) for model, tokenizer in ensemble.members]
            assert score == pytest.approx(sum(each) / 2, abs=1e-3), output
    # Answers come from the pooled candidates, alike batched or one at a time.
    assert ensemble.predict(QUESTIONS) == [ensemble.predict([q])[0] for q in QUESTIONS]


def test_a_members_teacher_forced_score_of_its_own_beam_output_is_the_beams_score(tmp_path: Path) -> None:
    # The ensemble takes a member's beam scores for its own outputs and scores only the others' outputs.
    ensemble = Predictor(ensemble_of(tmp_path / "model"))
    texts = ensemble.model_inputs(QUESTIONS)
    for member, (model, tokenizer) in enumerate(ensemble.members):
        beams = ensemble._beam_search(member, texts, None, 32)
        forced = ensemble._teacher_forced(model, tokenizer, texts, [[o for o, _ in c] for c in beams], 3)
        for candidates, scores in zip(beams, forced, strict=True):
            assert scores == pytest.approx([score for _, score in candidates], abs=1e-4)


def test_one_model_ranks_by_its_beam_alone(tmp_path: Path) -> None:
    ensemble = Predictor(ensemble_of(tmp_path / "model"))
    alone = Predictor.from_parts(ensemble.model, ensemble.tokenizer, ensemble.meta, ensemble.values)
    assert alone.candidates(QUESTIONS) == ensemble._beam_search(0, ensemble.model_inputs(QUESTIONS), None, 32)


def test_a_missing_ensemble_member_is_a_clear_error(tmp_path: Path) -> None:
    import shutil

    folder = ensemble_of(tmp_path / "model")
    shutil.rmtree(folder / "members" / "seed-2")
    with pytest.raises(PredictorError, match=r"member 'members/seed-2' is not a model folder.*dvc repro train"):
        Predictor(folder)


def test_further_members_that_agree_with_the_first_skip_their_own_beam_search(tmp_path: Path, monkeypatch) -> None:
    import math

    folder = ensemble_of(tmp_path / "model")
    full = Predictor(folder)  # a folder that records no agreement runs every member's beam, as before
    assert full.ensemble_agreement == 1.0
    texts = full.model_inputs(QUESTIONS)
    first = full._beam_search(0, texts, None, 32)
    (model, tokenizer), = full.others
    forced = full._teacher_forced(model, tokenizer, texts, [[o for o, _ in c] for c in first], 32)
    # The first member's candidates ranked by the two members' mean; the second's opinion of the best.
    ranked = [sorted(((o, (s + f) / 2) for (o, s), f in zip(c, fs, strict=True)), key=lambda x: -x[1])
              for c, fs in zip(first, forced, strict=True)]
    opinion = [dict(zip([o for o, _ in c], fs, strict=True))[r[0][0]]
               for c, fs, r in zip(first, forced, ranked, strict=True)]
    values = sorted(set(opinion))
    cut = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2  # between two questions' opinions
    meta = json.loads((folder / "medsql.json").read_text())
    (folder / "medsql.json").write_text(json.dumps(meta | {"ensemble_agreement": math.exp(cut)}))
    agreeing, pooled = Predictor(folder), full.candidates(QUESTIONS)
    searched: list[list[str]] = []
    real = Predictor._beam_search
    monkeypatch.setattr(Predictor, "_beam_search", lambda self, member, these, *a: (
        searched.append(these) if member else None) or real(self, member, these, *a))
    candidates = agreeing.candidates(QUESTIONS)
    from medsql import grounding

    grounded = [not grounding.problems(full.to_sql(r[0][0], q), full.values, full.links(q), q)
                for r, q in zip(ranked, QUESTIONS, strict=True)]
    settled = [i for i, o in enumerate(opinion) if o >= cut and grounded[i]]
    assert 0 < len(settled) < len(QUESTIONS), "the threshold should split the questions"
    assert searched == [[texts[i] for i in range(len(QUESTIONS)) if i not in settled]]
    for i, (mine, theirs) in enumerate(zip(candidates, pooled, strict=True)):
        expected = ranked[i] if i in settled else theirs
        assert [o for o, _ in mine] == [o for o, _ in expected]
        assert [s for _, s in mine] == pytest.approx([s for _, s in expected], abs=1e-4)
    # 0: the others search only where the best candidate is not grounded; 1: always.
    ungrounded_texts = [texts[i] for i in range(len(QUESTIONS)) if not grounded[i]]
    assert 0 < len(ungrounded_texts) < len(QUESTIONS)
    # Teacher forcing: with 1, each member scores only what its own search did not find, once, after the searches.
    forcing = Predictor._teacher_forced
    monkeypatch.setattr(Predictor, "_teacher_forced", lambda self, *a: searched.append("forced") or forcing(self, *a))
    for agreement, calls in ((0.0, ["forced", ungrounded_texts, "forced", "forced"]),
                             (1.0, [texts, "forced", "forced"])):
        (folder / "medsql.json").write_text(json.dumps(meta | {"ensemble_agreement": agreement}))
        searched.clear()
        Predictor(folder).candidates(QUESTIONS)
        assert searched == calls
    monkeypatch.setattr(Predictor, "_teacher_forced", forcing)
    # However sure they are, a best candidate the database cannot stand behind settles nothing.
    (folder / "medsql.json").write_text(json.dumps(meta | {"ensemble_agreement": 0.0}))
    ungrounded = Predictor(folder)
    monkeypatch.setattr("medsql.predictor.grounding.problems", lambda sql, *a: ["not grounded"])
    searched.clear()
    ungrounded.candidates(QUESTIONS)
    assert searched == [texts]


def test_an_answer_that_leaves_out_what_the_question_names_is_uncertain_however_sure(
        tmp_path: Path, mimicsql_db: Path) -> None:
    # The calibration never sees such answers on validation; the Predictor marks them all the same.
    folder = untrained_model(tmp_path / "model", db=mimicsql_db)
    meta = json.loads((folder / "medsql.json").read_text())
    (folder / "medsql.json").write_text(json.dumps(meta | {"min_confidence": 0.0}))
    predictor = Predictor(folder)
    question = "how many female patients over 65 are on medicare?"
    insured = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."GENDER" = "F" '
               'AND DEMOGRAPHIC."INSURANCE" = "Medicare"')
    dropped = predictor._answer(question, [(sql_to_compact(insured), -0.01)])  # a number: nothing to mend it with
    assert dropped.problems == ('the question says "65", which the query leaves out',) and not dropped.mended
    assert dropped.uncertain and dropped.confidence > predictor.min_confidence  # above the threshold
    whole = predictor._answer(question, [(sql_to_compact(insured + ' AND DEMOGRAPHIC."AGE" > "65"'), -0.01)])
    assert whole.grounded and not whole.uncertain
    # A value the database lacks is a doubt the confidence weighs, not a departure from the question.
    named = ('SELECT DEMOGRAPHIC."DAYS_STAY" FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."NAME" = "Elizabeth Bateman"')
    unknown = predictor._answer("days of stay of elizabeth bateman?", [(sql_to_compact(named), -0.01)])
    assert not unknown.grounded and not unknown.uncertain


def test_where_no_candidate_qualifies_a_mended_one_the_models_score_is_taken_and_says_what_changed(
        tmp_path: Path, mimicsql_db: Path) -> None:
    folder = untrained_model(tmp_path / "model", db=mimicsql_db)
    predictor = Predictor(folder)
    question = "how many female patients over 65 are on medicare?"
    aged = ('SELECT COUNT ( DISTINCT DEMOGRAPHIC."SUBJECT_ID" ) FROM DEMOGRAPHIC WHERE DEMOGRAPHIC."GENDER" = "F" '
            'AND DEMOGRAPHIC."AGE" < "65"')
    answer = predictor._answer(question, [(sql_to_compact(aged), -0.01)])
    mended = aged.replace("<", ">") + ' AND DEMOGRAPHIC."INSURANCE" = "Medicare"'
    assert answer.sql == mended and answer.mended == (
        'added DEMOGRAPHIC.INSURANCE = "Medicare" (the question\'s "medicare")',
        'DEMOGRAPHIC.AGE > 65, as the question says "over 65"')
    assert answer.grounded and answer.chosen == 1 and answer.top_sql == aged  # the model's own stays the top
    assert answer.as_dict()["mended"] == list(answer.mended)
    # The models score the mended version by teacher forcing; that score is its confidence's.
    model, tokenizer = predictor.members[0]
    forced = predictor._teacher_forced(model, tokenizer, predictor.model_inputs([question]),
                                       [[sql_to_compact(mended)]], 1)[0][0]
    assert answer.features["logprob"] == pytest.approx(forced, abs=1e-4)
    # A grounded candidate the models score above it is taken instead; below it, the mended one is.
    other = aged.replace("<", ">=") + ' AND DEMOGRAPHIC."INSURANCE" = "Medicare"'
    assert predictor._answer(question, [(sql_to_compact(aged), -0.01), (sql_to_compact(other), forced + 1)]
                             ).sql == other
    assert predictor._answer(question, [(sql_to_compact(aged), -0.01), (sql_to_compact(other), forced - 1)]
                             ).sql == mended
    # Where a candidate qualifies, nothing is mended.
    right = predictor._answer(question, [(sql_to_compact(mended), -0.01)])
    assert right.mended == () and right.chosen == 0
