"""medsql.decoding.beam_search gives what transformers' `generate` gives, to the bit, and is used only where it does.

The fast tests use small copy models at initial weights (built here in a second): their answers
are nonsense, but every step's numbers are the model's, and their beams run to the length limit
as often as they stop, so both ways a search ends are compared. The `slow` test compares a
trained model's beams on held-out questions, where most beams end with the end-of-sequence token.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_predictor import QUESTIONS, SQL

from medsql import decoding, modeling
from medsql.config import EmbeddedModel
from medsql.predictor import Predictor
from medsql.sqlform import sql_to_compact

SHAPE = {"vocab_size": 600, "d_model": 32, "d_ff": 64, "num_heads": 2, "num_layers": 2, "num_decoder_layers": 2,
         "dropout": 0.0, "copy_mechanism": True}


def copy_model(seed: int):
    """(model, tokenizer): a copy model of two encoder and two decoder layers at initial weights, in inference."""
    texts = [f"translate to SQL: {q}" for q in QUESTIONS] + [sql_to_compact(s) for s in SQL] * 3
    torch.manual_seed(seed)
    tokenizer = modeling.train_tokenizer(texts, SHAPE["vocab_size"])
    model = modeling.build_scratch_model(tokenizer, EmbeddedModel(**SHAPE))
    model.set_attn_implementation("sdpa")  # as a saved model folder loads
    return model.eval(), tokenizer


def settings_for(model, beams: int, max_new_tokens: int = 24):
    """The decoding settings the Predictor gives a model folder (Predictor.generation_config)."""
    settings = copy.deepcopy(model.generation_config)
    settings.max_length = None
    settings.max_new_tokens = max_new_tokens
    settings.num_beams = settings.num_return_sequences = beams
    settings.return_dict_in_generate = settings.output_scores = True
    return settings


def inputs(questions: list[str]) -> list[str]:
    return [f"translate to SQL: {q}" for q in questions]


def assert_same_search(model, tokenizer, texts: list[str], settings, max_length: int | None = None) -> None:
    """`beam_search` and `generate` give the same sequences and scores for these model inputs, in one batch."""
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=max_length is not None,
                      max_length=max_length)
    assert decoding.applies(model, settings)
    with torch.inference_mode():
        expected = model.generate(**batch, generation_config=settings)
    sequences, scores = decoding.beam_search(model, batch.input_ids, batch.attention_mask, settings)
    assert torch.equal(sequences, expected.sequences)
    assert torch.equal(scores, expected.sequences_scores)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("beams", [2, 4])
def test_beam_search_returns_generates_sequences_and_scores_to_the_bit(seed: int, beams: int) -> None:
    model, tokenizer = copy_model(seed)
    settings = settings_for(model, beams)
    assert_same_search(model, tokenizer, inputs(QUESTIONS), settings)  # one padded batch
    for question in QUESTIONS[:3]:  # and alone
        assert_same_search(model, tokenizer, inputs([question]), settings)


def test_searches_that_end_on_the_length_limit_or_the_end_token_both_match() -> None:
    model, tokenizer = copy_model(2)
    ended = set()
    for limit in (1, 3, 40):
        settings = settings_for(model, 2, max_new_tokens=limit)
        assert_same_search(model, tokenizer, inputs(QUESTIONS), settings)
        batch = tokenizer(inputs(QUESTIONS), return_tensors="pt", padding=True)
        sequences, _ = decoding.beam_search(model, batch.input_ids, batch.attention_mask, settings)
        ended |= {"end token" if tokenizer.eos_token_id in row.tolist() else "limit" for row in sequences}
    assert ended == {"end token", "limit"}


def test_beam_search_stands_aside_where_generate_would_do_more(monkeypatch) -> None:
    model, _ = copy_model(1)
    settings = settings_for(model, 2)
    assert decoding.applies(model, settings)
    with monkeypatch.context() as patch:  # a transformers without one of the helpers it calls
        patch.setattr(decoding, "HELPERS", (*decoding.HELPERS, "_a_helper_transformers_dropped"))
        assert not decoding.applies(model, settings)
    greedy = settings_for(model, 1)
    assert not decoding.applies(model, greedy)  # one beam: generate's greedy search
    for name, value in (("repetition_penalty", 1.2), ("no_repeat_ngram_size", 3), ("min_new_tokens", 2),
                        ("do_sample", True), ("output_attentions", True)):
        changed = copy.deepcopy(settings)
        setattr(changed, name, value)
        assert not decoding.applies(model, changed), name
    assert not decoding.applies(model.train(), settings)  # dropout on: not an answer's search
    model.eval()
    model.set_attn_implementation("eager")
    assert not decoding.applies(model, settings)
    _, tokenizer = copy_model(1)  # a T5 without the copy head (the reference profile's kind of model)
    plain = modeling.build_scratch_model(tokenizer, EmbeddedModel(**(SHAPE | {"copy_mechanism": False}))).eval()
    plain.set_attn_implementation("sdpa")
    assert not decoding.applies(plain, settings_for(plain, 2))


def test_the_predictor_answers_alike_through_either_search(monkeypatch, tmp_path) -> None:
    from test_predictor import untrained_model

    predictor = Predictor(untrained_model(tmp_path / "model", seed=3, num_beams=4))
    assert decoding.applies(predictor.model, predictor.generation_config())
    fast = predictor.candidates(QUESTIONS)
    monkeypatch.setattr(decoding, "applies", lambda model, settings: False)
    assert predictor.candidates(QUESTIONS) == fast


@pytest.mark.slow
def test_a_trained_models_beams_match_generate_on_held_out_questions(request) -> None:
    """The pipeline's trained model (else one the train stage trains briefly here), every member,
    on held-out questions alone and in padded batches."""
    from medsql import paths
    from medsql.util import read_jsonl

    if (paths.MODEL / "medsql.json").is_file():
        predictor, split = Predictor(paths.MODEL), paths.SPLITS / "test.jsonl"
    else:
        model_dir = request.getfixturevalue("briefly_trained_model")
        predictor, split = Predictor(model_dir), model_dir.parent.parent / "data" / "splits" / "test.jsonl"
    texts = predictor.model_inputs([r["question"] for r in read_jsonl(split)][::7][:64])
    for member, (model, tokenizer) in enumerate(predictor.members):
        settings = predictor.generation_config(None, member)
        assert decoding.applies(model, settings)
        for size in (1, 16):
            for start in range(0, len(texts), size):
                assert_same_search(model, tokenizer, texts[start:start + size], settings,
                                   predictor.meta["max_input_tokens"])


def test_the_search_benchmark_times_both_searches_on_the_same_questions_and_finds_them_equal(
        tiny_project, tmp_path, capsys) -> None:
    import json

    from test_predictor import untrained_model

    from medsql import bench

    model = untrained_model(tmp_path / "model", seed=2, num_beams=2)
    assert bench.main(["--train-steps", "0", "--model", str(model), "--questions", "5",
                       "--search-questions", "5", "--batch-size", "4"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["search"]
    assert figures["questions"] == 5 and figures["members"] == 1
    assert figures["searches_differing"] == 0
    for way in ("generate", "beam_search"):
        assert figures[f"{way}_ms_per_question(alone)"] > 0 and figures[f"{way}_ms_per_question(batch 4)"] > 0
