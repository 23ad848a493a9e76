"""The one way medsql turns questions into SQL: load a trained model, generate, decode.

Every consumer (training metrics, `medsql ask`, evaluation, the MLflow pyfunc, the demo page)
goes through `Predictor`, so a model answers the same wherever it is asked.

A model folder (what the train stage writes) holds the Hugging Face model and tokenizer plus
`medsql.json` (how to build inputs and read outputs) and, for the compact target form,
`values.json` (a ValueIndex: the literal values whose casing a lower-case output gets back).

A folder may hold further ensemble members (`medsql.json`'s `members`: sub-folders, each a model and
its tokenizer trained from another seed). Then each candidate is ranked by the members' mean
log-probability of it. The first member runs its beam search and the others score its candidates
by teacher forcing; where they agree with its best one (`ensemble_agreement`) and it is grounded,
that is all. Where
they do not, every member runs its beam search, the candidates are pooled, and each member scores
the others' by teacher forcing (a member's beam scored its own). With one model, the beam's own
scores rank them.

`answer` is what interfaces show: the beam's candidates are decoded, the best one the database can
stand behind is taken (medsql.grounding: inside the grammar, type-correct, literals that exist or
that the linker proposed), and it carries a confidence (medsql.confidence, calibrated on the
validation split into the folder's `confidence.json`) and the next candidates. Where the top
candidates (MENDED_CANDIDATES) do not qualify, their mended versions (medsql.grounding.mended) are
scored by every member (teacher forcing) and ranked among the candidates after the top one; an
answer taken from one lists what was changed (`Answer.mended`). `predict` gives the SQL of those answers.
"""

from __future__ import annotations

import copy
import json
import math
import operator
import os
from pathlib import Path
from typing import Any

import sqlparse

from medsql import grounding, paths
from medsql.confidence import Answer, Calibration, features, uncalibrated
from medsql.evaluation.recovery import ValueIndex
from medsql.linking import Link, Linker, input_linker, linked_input
from medsql.sqlform import FormError, Query, in_dataset_form, parse_compact, parse_sql, render_sql, to_compact
from medsql.text import MAX_QUESTION_CHARS, QuestionError, check_question, model_input, normalise_question

__all__ = ["MAX_BEAMS", "MAX_QUESTION_CHARS", "Answer", "Predictor", "PredictorError", "QuestionError", "check_beams"]

# The beam sizes any interface accepts (params.yaml's train.num_beams has the same bounds): beam
# search costs memory and time in proportion, and past a handful of beams answers stop improving.
MAX_BEAMS = 16
ALTERNATIVES = 2  # next candidates an answer carries beside its SQL
MENDED_CANDIDATES = 2  # the candidates above the first grounded one (all: none is) mended, at most this many
# The ensemble_agreement of a folder from before it was recorded: every member runs its beam search,
# as that folder was evaluated.
ALWAYS_SEARCH = 1.0


class PredictorError(RuntimeError):
    """A model that cannot be loaded or a setting it cannot be asked with (the message says which).

    A question no interface answers is a `medsql.text.QuestionError` instead (a ValueError).
    """


def check_beams(num_beams: object) -> int | None:
    """None (the model's own beam size) or a whole number of beams from 1 to MAX_BEAMS; else PredictorError."""
    if num_beams is None:
        return None
    try:
        if isinstance(num_beams, bool):
            raise TypeError
        beams = operator.index(num_beams)  # int, or numpy's integers (MLflow's params)
    except TypeError:
        raise PredictorError(f"the number of beams must be a whole number from 1 to {MAX_BEAMS}, "
                             f"not {num_beams!r}") from None
    if not 1 <= beams <= MAX_BEAMS:
        raise PredictorError(f"the number of beams must be from 1 to {MAX_BEAMS}, not {beams}")
    return beams


class Predictor:
    """A trained model folder, ready to answer questions with SQL in the dataset's form."""

    def __init__(self, model_dir: str | os.PathLike, device: str | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from medsql import modeling  # noqa: F401  (registers the copy-head T5 with the Auto classes)

        model_dir = Path(model_dir)
        meta_path = model_dir / "medsql.json"
        if not meta_path.is_file():
            raise PredictorError(f"{model_dir}: not a medsql model folder (no medsql.json); "
                                 "train one with `dvc repro train`")
        self.model_dir = model_dir
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.name = self.meta.get("name", model_dir.name)
        values_path = model_dir / "values.json"
        self.values = ValueIndex.load(values_path) if values_path.is_file() else None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(self.device).eval()
        # Generation settings live in the model's generation_config, set once here: generate()
        # passes none, so transformers has nothing to reconcile (and nothing to warn about) per batch.
        self.model.generation_config = self._generation_settings(self.model.generation_config)
        self.others = [self._load_member(model_dir, folder) for folder in self.meta.get("members", [])]
        self._by_beams: dict[tuple[int, int], Any] = {}
        self.calibration = Calibration.load(model_dir)
        self._linker: Linker | None = None
        self._links: dict[str, list[Link]] = {}

    def _load_member(self, model_dir: Path, folder: str) -> tuple[Any, Any]:
        """A further ensemble member's model (in eval mode, with this folder's decoding settings) and tokenizer."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        path = model_dir / folder
        if not (path / "config.json").is_file():
            raise PredictorError(f"{model_dir / 'medsql.json'}: member {folder!r} is not a model folder "
                                 f"(no {path / 'config.json'}); retrain with `dvc repro train`")
        model = AutoModelForSeq2SeqLM.from_pretrained(path).to(self.device).eval()
        model.generation_config = self._generation_settings(model.generation_config)
        return model, AutoTokenizer.from_pretrained(path)

    @classmethod
    def from_parts(cls, model, tokenizer, meta: dict[str, Any], values: ValueIndex | None,
                   others: list[tuple[Any, Any]] | tuple = ()) -> Predictor:
        """A Predictor over objects in memory (the train stage validates through this); `others`: further
        ensemble members, (model, tokenizer) pairs."""
        predictor = cls.__new__(cls)
        predictor.model_dir, predictor.name = None, meta.get("name", "in-memory")
        predictor.model, predictor.tokenizer, predictor.meta, predictor.values = model, tokenizer, meta, values
        predictor.others = list(others)
        predictor.device = next(model.parameters()).device if model is not None else "cpu"
        predictor._by_beams = {}  # the model stays as it is: the Trainer generates with it too
        predictor.calibration, predictor._linker, predictor._links = None, None, {}
        return predictor

    @property
    def linker(self) -> Linker | None:
        """The value linker over the database's values in the folder (built on first use; None without
        values.json). Its candidates join the model input (`link_candidates`) and count as grounded."""
        if self._linker is None and self.values is not None:
            self._linker = input_linker(self.values)
        return self._linker

    @property
    def min_confidence(self) -> float:
        """Answers below this confidence are marked uncertain (train.min_confidence, as the folder records it;
        a folder from before it was recorded gets the setting's default)."""
        if self.meta.get("min_confidence") is None:
            from medsql.config import TrainConfig

            return TrainConfig().min_confidence
        return float(self.meta["min_confidence"])

    @property
    def ensemble_agreement(self) -> float:
        """Where the further members give the first member's best candidate at least this per-token
        probability, their own beam searches are skipped (train.ensemble_agreement, as the folder
        records it)."""
        return float(self.meta.get("ensemble_agreement", ALWAYS_SEARCH))

    def _generation_settings(self, base):
        """A copy of `base` (a GenerationConfig) holding the model folder's decoding settings."""
        settings = copy.deepcopy(base)
        settings.max_length = None  # a length saved by training would clash with max_new_tokens
        settings.max_new_tokens = self.meta["max_target_tokens"]
        settings.num_beams = check_beams(self.meta["num_beams"])
        return settings

    @property
    def members(self) -> list[tuple[Any, Any]]:
        """Every model that answers, with its tokenizer: this folder's own, then any further members."""
        return [(self.model, self.tokenizer), *self.others]

    def generation_config(self, num_beams: int | None = None, member: int = 0):
        """The decoding settings for this beam size (None: the model's own) and member (0: the folder's
        own model), built once per pair."""
        beams = check_beams(num_beams) or self.meta["num_beams"]
        if (member, beams) not in self._by_beams:
            settings = self._generation_settings(self.members[member][0].generation_config)
            settings.num_beams = beams
            settings.num_return_sequences = beams  # every candidate: grounded decoding chooses among them
            settings.return_dict_in_generate = True
            settings.output_scores = True
            self._by_beams[member, beams] = settings
        return self._by_beams[member, beams]

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str = "latest") -> Predictor:
        """'latest' (models/medsql), 'champion'/'challenger' (registry alias), a folder, or a URI."""
        if model == "latest":
            if not (paths.MODEL / "medsql.json").is_file():
                raise PredictorError(f"no trained model at {paths.MODEL}; run `dvc repro train` first")
            return cls(paths.MODEL)
        if model in ("champion", "challenger"):
            from medsql.config import ConfigError, load_config

            try:
                name = load_config().register.model_name
            except ConfigError as err:
                raise PredictorError(str(err)) from err
            model = f"models:/{name}@{model}"
        if "://" in model or model.startswith(("models:/", "runs:/")):
            return cls(_download_model_dir(model))
        if not Path(model).exists():
            raise PredictorError(f"model path {model!r} does not exist")
        return cls(model)

    @classmethod
    def baseline(cls, model_dir: str | os.PathLike | None = None) -> Predictor:
        """The trained model's base, zero-shot: the pretrained checkpoint it was adapted from, or
        for the embedded profile the same architecture at its initial (untrained) weights."""
        base = Path(model_dir or paths.MODEL) / "baseline"
        if not (base / "medsql.json").is_file():
            raise PredictorError(f"no baseline at {base}; train a model with `dvc repro train` first")
        return cls(base)

    # ---- answering -----------------------------------------------------------------------
    def model_inputs(self, questions: list[str]) -> list[str]:
        """Each question checked (medsql.text.check_question: QuestionError if refused) and put in
        the form the model was trained on."""
        if isinstance(questions, str | bytes):
            raise TypeError("questions must be a list of questions, not one string")
        texts = []
        for number, q in enumerate(questions, 1):
            try:
                question = check_question(q)
            except QuestionError as err:
                raise (QuestionError(f"question {number} of {len(questions)}: {err}") if len(questions) > 1
                       else err) from None
            text = model_input(normalise_question(question, self.meta["lowercase_questions"]),
                               self.meta["task_prefix"], self.meta["schema_context"])
            if self.meta.get("link_candidates") and self.linker is not None:
                text = linked_input(text, self.links(question), self.meta["link_candidates"])
            texts.append(text)
        return texts

    def links(self, question: str) -> list[Link]:
        """The linker's candidates for a question (none without values.json), kept for the answer that follows."""
        if self.linker is None:
            return []
        if question not in self._links:
            if len(self._links) >= 4096:
                self._links.clear()
            self._links[question] = self.linker.link(question)
        return self._links[question]

    def generate(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32) -> list[str]:
        """Raw decoded model outputs, the top candidate of each (compact form or SQL, per the target form)."""
        return [candidates[0][0] for candidates in self.candidates(questions, num_beams, batch_size)]

    def candidates(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32
                   ) -> list[list[tuple[str, float]]]:
        """Every beam's decoded output with its length-normalised log-probability, best first.

        With further members: the first member's beam search runs, and the others score its
        candidates by teacher forcing. Where every other member gives the candidate the members rank
        first at least the folder's `ensemble_agreement` (a per-token probability) and that candidate
        is grounded (medsql.grounding), they agree, and those candidates are the answer's. Elsewhere
        every other member runs its own beam search too, the outputs are pooled, and each member
        scores the ones it has not (its own beam's scores are teacher forcing's: a test checks it).
        Candidates are ranked by the members' mean."""
        texts = self.model_inputs(questions)
        first = self._beam_search(0, texts, num_beams, batch_size)
        if len(self.members) == 1:
            return first
        pooled = [list(_best_scores(candidates)) for candidates in first]
        share = self.ensemble_agreement
        # The same as a log-probability a token (the candidates' scores); None: the others always search.
        agreement = None if share >= 1 else math.log(share) if share > 0 else -math.inf
        # known[member][question]: output -> that member's log-probability per token of it
        known = [[_best_scores(candidates) for candidates in first]]
        # Where the others always search, what they have not scored is teacher-forced after it.
        known += [[{} for _ in texts] if agreement is None else
                  [dict(zip(outputs, scores, strict=True)) for outputs, scores in
                   zip(pooled, self._teacher_forced(model, tokenizer, texts, pooled, batch_size), strict=True)]
                  for model, tokenizer in self.others]
        # They settle a question only on a best candidate the database can stand behind: where it
        # is not grounded, the others' own candidates may hold one that is.
        unsettled = list(range(len(texts))) if agreement is None else [
            i for i, ranked in enumerate(_mean_ranked(pooled, known))
            if any(member[i][ranked[0][0]] < agreement for member in known[1:])
            or grounding.problems(self.to_sql(ranked[0][0], questions[i]), self.values, self.links(questions[i]),
                                  questions[i])]
        if unsettled:
            subset = [texts[i] for i in unsettled]
            for number in range(1, len(self.members)):
                own = self._beam_search(number, subset, num_beams, batch_size)
                for i, candidates in zip(unsettled, own, strict=True):
                    known[number][i] |= _best_scores(candidates)
                    pooled[i] = list(dict.fromkeys(pooled[i] + [output for output, _ in candidates]))
            for (model, tokenizer), member in zip(self.members, known, strict=True):
                missing = [[output for output in pooled[i] if output not in member[i]] for i in unsettled]
                forced = self._teacher_forced(model, tokenizer, subset, missing, batch_size)
                for i, outputs, scores in zip(unsettled, missing, forced, strict=True):
                    member[i] |= dict(zip(outputs, scores, strict=True))
        return _mean_ranked(pooled, known)

    def _beam_search(self, member: int, texts: list[str], num_beams: int | None, batch_size: int
                     ) -> list[list[tuple[str, float]]]:
        """One member's beam search over model inputs: each one's decoded outputs with their scores, best first."""
        import torch

        from medsql import decoding
        from medsql.modeling import decode_compact

        model, tokenizer = self.members[member]
        settings = self.generation_config(num_beams, member)
        per_question = settings.num_return_sequences
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=self.meta["max_input_tokens"])
            batch = batch.to(self.device)
            if decoding.applies(model, settings):
                sequences, found = decoding.beam_search(model, batch.input_ids, batch.attention_mask, settings)
                scores = [float(v) for v in found.tolist()]
            else:
                with torch.inference_mode():
                    generated = model.generate(**batch, generation_config=settings)
                    sequences, scores = generated.sequences, _sequence_scores(model, generated, settings.num_beams)
            decoded = [decode_compact(tokenizer, ids) if self.meta["target_form"] == "compact"
                       else tokenizer.decode(ids, skip_special_tokens=True).strip()
                       for ids in sequences.tolist()]
            for first in range(0, len(decoded), per_question):
                out.append(list(zip(decoded[first:first + per_question], scores[first:first + per_question],
                                    strict=True)))
        return out

    def _teacher_forced(self, model, tokenizer, texts: list[str], outputs: list[list[str]], batch_size: int
                        ) -> list[list[float]]:
        """Each output's log-probability per token under `model`, given its model input (teacher forcing);
        each input is encoded once, however many outputs it has."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        from medsql.modeling import target_ids

        out: list[list[float]] = []
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                               max_length=self.meta["max_input_tokens"]).to(self.device)
            these = outputs[start:start + batch_size]
            if not any(these):
                out.extend([] for _ in these)
                continue
            owner = torch.tensor([i for i, each in enumerate(these) for _ in each], device=self.device)
            ids = target_ids(tokenizer, [output for each in these for output in each],
                             self.meta["target_form"] == "compact",
                             self.meta["max_target_tokens"] + 1)  # + 1: the end of sequence generation adds
            labels = torch.full((len(ids), max(map(len, ids), default=1)), -100, dtype=torch.long)
            for row, label in enumerate(ids):
                labels[row, :len(label)] = torch.tensor(label)
            labels = labels.to(self.device)
            with torch.inference_mode():
                encoded = model.get_encoder()(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
                logits = model(input_ids=inputs.input_ids[owner], attention_mask=inputs.attention_mask[owner],
                               encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state[owner]),
                               labels=labels).logits.float()
            kept = labels != -100
            token = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
            flat = ((token * kept).sum(1) / kept.sum(1).clamp_min(1)).tolist()
            for each in these:
                out.append(flat[:len(each)])
                flat = flat[len(each):]
        return out

    def to_sql(self, output: str, question: str | None = None) -> str:
        """A decoded output as SQL in the dataset's form (compact outputs are expanded; the query
        written as the dataset writes it: `in_dataset_form`).

        With the question, literals also go through value recovery (snapped to values the data
        holds or to the question's own words); without it only their casing is restored.
        """
        if self.meta["target_form"] == "compact":
            try:
                query = parse_compact(output)
            except FormError:
                return output  # not expandable: return it as it came, so evaluation counts it wrong
            # A condition written twice (`age < 2110 and age < 2110`, a small model's stutter) is one.
            query = in_dataset_form(Query(query.select, list(dict.fromkeys(query.conditions))))
            # The compact form is lower-case: literals get their stored casing back.
            output = render_sql(self.values.recover_query(query, fuzzy=False) if self.values else query)
        else:
            try:
                query = parse_sql(output)
                if (written := in_dataset_form(query)) is not query:
                    output = render_sql(written)
            except FormError:
                pass  # outside the grammar: as it came, so evaluation counts it wrong
        return self.values.recover(output, question) if self.values and question else output

    def predict(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32,
                recover: bool = True) -> list[str]:
        """SQL for each question (the `answer`s' SQL); `recover=False`: without value recovery."""
        return [a.sql if recover else a.raw_sql for a in self.answer(questions, num_beams, batch_size)]

    def answer(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32) -> list[Answer]:
        """Each question's Answer: the best grounded candidate, its confidence, the next candidates."""
        return [self._answer(question, candidates) for question, candidates
                in zip(questions, self.candidates(questions, num_beams, batch_size), strict=True)]

    def _answer(self, question: str, candidates: list[tuple[str, float]]) -> Answer:
        links = self.links(question)
        recovered = [self.to_sql(output, question) for output, _ in candidates]
        found = grounding.check(recovered, self.values, links, question)
        chosen, problems = grounding.first_grounded(found)
        changes: dict[str, tuple[str, ...]] = {}  # a mended candidate's SQL -> what mending changed
        if candidates and (problems or chosen > 0):
            mends = self._mended(question, recovered[:min(chosen or MENDED_CANDIDATES, MENDED_CANDIDATES)],
                                 recovered, links)
            if mends:
                # The top candidate stays first (what plain decoding answers); the rest rank by score.
                # Only the mended SQL is checked: the candidates' problems are known.
                checked = [((output, score), sql, grounding.problems(sql, self.values, links, question))
                           for output, score, sql, _ in mends]
                rows = list(zip(candidates, recovered, found, strict=True))
                rows[1:] = sorted(rows[1:] + checked, key=lambda row: -row[0][1])
                candidates, recovered, found = ([row[i] for row in rows] for i in range(3))
                changes = {sql: change for _, _, sql, change in mends}
                chosen, problems = grounding.first_grounded(found)
        grounded = {sql: not problems_of for sql, problems_of in zip(recovered, found, strict=True)}
        # Candidates that read the same once recovered are one answer: the next distinct one is the rival.
        distinct = list(dict.fromkeys(recovered))
        logprobs = {sql: max(lp for (_, lp), r in zip(candidates, recovered, strict=True) if r == sql)
                    for sql in distinct}

        def described(sql: str, passed_over: bool) -> dict[str, float]:
            rivals = [logprobs[other] for other in distinct if other != sql]
            return features(logprobs[sql], max(rivals) if rivals else None, grounded[sql], passed_over)

        def confidence(values: dict[str, float]) -> float:
            return round(self.calibration.probability(values) if self.calibration else uncalibrated(values), 4)

        sql = recovered[chosen]
        chosen_features = described(sql, chosen > 0)
        score = confidence(chosen_features)
        others = [other for other in distinct if other != sql][:ALTERNATIVES]
        # An answer that departs from the question (leaves out what it names, bounds a number the other
        # way) answers another question: uncertain however sure the model is of it.
        uncertain = score < self.min_confidence or bool(problems) and grounding.departs(sql, links, question)
        return Answer(sql=sql, raw_sql=self.to_sql(candidates[chosen][0]), confidence=score,
                      uncertain=uncertain, grounded=not problems, problems=tuple(problems),
                      mended=changes.get(sql, ()) if chosen > 0 else (),
                      chosen=chosen, top_sql=recovered[0],
                      alternatives=tuple((other, confidence(described(other, other != recovered[0])))
                                         for other in others),
                      calibrated=self.calibration is not None, features=chosen_features)

    def _mended(self, question: str, mending: list[str], recovered: list[str], links: list[Link]
                ) -> list[tuple[str, float, str, tuple[str, ...]]]:
        """The mended versions (medsql.grounding.mended) of the candidates' SQL `mending` that none of
        `recovered` (every candidate's SQL) reads as: (output, the members' mean log-probability a
        token of it by teacher forcing, its SQL, what mending changed), one per distinct SQL."""
        known = set(recovered)
        versions: dict[str, tuple[str, tuple[str, ...]]] = {}  # output -> (SQL, changes)
        for sql in mending:
            try:
                found = grounding.mended(parse_sql(sql), self.values, links, question)
            except FormError:
                continue
            if found is None:
                continue
            version, change = found
            output = to_compact(version) if self.meta["target_form"] == "compact" else render_sql(version)
            mended_sql = self.to_sql(output, question)
            if mended_sql not in known:
                known.add(mended_sql)
                versions[output] = (mended_sql, tuple(change))
        if not versions:
            return []
        text, outputs = self.model_inputs([question]), [list(versions)]
        scores = [self._teacher_forced(model, tokenizer, text, outputs, 1)[0] for model, tokenizer in self.members]
        return [(output, sum(member[i] for member in scores) / len(scores), *versions[output])
                for i, output in enumerate(outputs[0])]

    @staticmethod
    def pretty(sql: str) -> str:
        return sqlparse.format(sql, reindent=True, keyword_case="upper")


def _best_scores(candidates: list[tuple[str, float]]) -> dict[str, float]:
    """A beam's outputs with their scores, best first; an output decoded twice keeps its better score."""
    scores: dict[str, float] = {}
    for output, score in candidates:
        scores.setdefault(output, score)
    return scores


def _mean_ranked(pooled: list[list[str]], known: list[list[dict[str, float]]]) -> list[list[tuple[str, float]]]:
    """Each question's pooled outputs with the members' mean score, best first (pool order on a tie)."""
    out = []
    for i, outputs in enumerate(pooled):
        mean = [sum(member[i][output] for member in known) / len(known) for output in outputs]
        out.append(sorted(zip(outputs, mean, strict=True), key=lambda candidate: -candidate[1]))
    return out


def _sequence_scores(model, generated, beams: int) -> list[float]:
    """Each returned sequence's log-probability per token (beam search's own length-normalised score)."""
    if beams > 1 and getattr(generated, "sequences_scores", None) is not None:
        return [float(v) for v in generated.sequences_scores.tolist()]
    steps = model.compute_transition_scores(generated.sequences, generated.scores, normalize_logits=True)
    scores = []
    for row in steps:
        finite = row[row.isfinite()]
        # Padding after the end of a sequence scores 0: the mean runs over its real tokens.
        real = finite[finite != 0]
        scores.append(float(real.mean()) if len(real) else 0.0)
    return scores


def _download_model_dir(uri: str) -> Path:
    """Fetch an MLflow pyfunc model logged by the train stage and return its model folder.

    Only reads the store: resolving an alias creates no experiment, and a store that is absent,
    down or refusing us is a PredictorError naming its URI (waits bounded as medsql.tracking says).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from medsql import tracking

    try:
        store = tracking.use_store()
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except tracking.TrackingError as err:
        raise PredictorError(f"cannot load {uri}: {err}") from err
    except MlflowException as err:
        if tracking.is_missing(err):
            raise PredictorError(f"cannot load {uri}: {err.message} in the MLflow store {store} "
                                 "(register a model with `dvc repro register`, or promote one with "
                                 "`medsql promote`)") from err
        raise PredictorError(f"cannot load {uri}: {tracking.failure(err, store)}") from err
    except Exception as err:  # artifact stores raise their own types (OSError, requests, boto, ...)
        raise PredictorError(f"cannot load {uri}: {tracking.failure(err, store)}") from err
    # The model folder is the outermost one: its baseline/ and members/ folders hold medsql.json too.
    found = sorted(local.rglob("medsql.json"), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise PredictorError(f"{uri} holds no medsql model folder")
    return found[0].parent
