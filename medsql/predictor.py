"""The one way medsql turns questions into SQL: load a trained model, generate, decode.

Every consumer (training metrics, `medsql ask`, evaluation, the MLflow pyfunc, the demo page)
goes through `Predictor`, so a model answers the same wherever it is asked.

A model folder (what the train stage writes) holds the Hugging Face model and tokenizer plus
`medsql.json` (how to build inputs and read outputs) and, for the compact target form,
`values.json` (a ValueIndex: the literal values whose casing a lower-case output gets back).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlparse

from medsql import paths
from medsql.evaluation.recovery import ValueIndex
from medsql.preprocess import model_input, normalise_question
from medsql.sqlform import FormError, parse_compact, render_sql

MAX_QUESTION_CHARS = 500


class PredictorError(RuntimeError):
    """A model that cannot be loaded or a question that cannot be asked (message says which)."""


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

    @classmethod
    def from_parts(cls, model, tokenizer, meta: dict[str, Any], values: ValueIndex | None) -> Predictor:
        """A Predictor over objects in memory (the train stage validates through this)."""
        predictor = cls.__new__(cls)
        predictor.model_dir, predictor.name = None, meta.get("name", "in-memory")
        predictor.model, predictor.tokenizer, predictor.meta, predictor.values = model, tokenizer, meta, values
        predictor.device = next(model.parameters()).device if model is not None else "cpu"
        return predictor

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str = "latest") -> Predictor:
        """'latest' (models/medsql), 'champion'/'challenger' (registry alias), a folder, or a URI."""
        if model == "latest":
            if not (paths.MODEL / "medsql.json").is_file():
                raise PredictorError(f"no trained model at {paths.MODEL}; run `dvc repro train` first")
            return cls(paths.MODEL)
        if model in ("champion", "challenger"):
            from medsql.util import load_params

            name = load_params().get("register", {}).get("model_name", "medsql")
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
        texts = []
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise PredictorError("empty question: ask something, e.g. 'how many patients are over 65?'")
            if len(q) > MAX_QUESTION_CHARS:
                raise PredictorError(f"question too long ({len(q)} characters, at most {MAX_QUESTION_CHARS})")
            question = normalise_question(q, self.meta.get("lowercase_questions", True))
            texts.append(model_input(question, self.meta["task_prefix"], self.meta.get("schema_context", False)))
        return texts

    def generate(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32) -> list[str]:
        """Raw decoded model outputs (compact form or SQL, per the model's target form)."""
        import torch

        from medsql.modeling import decode_compact

        beams = num_beams or self.meta.get("num_beams", 4)
        texts = self.model_inputs(questions)
        outputs: list[str] = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.meta.get("max_input_tokens", 128))
            with torch.inference_mode():
                generated = self.model.generate(
                    **batch.to(self.device), num_beams=beams,
                    max_new_tokens=self.meta.get("max_target_tokens", 128),
                )
            for ids in generated.tolist():
                if self.meta["target_form"] == "compact":
                    outputs.append(decode_compact(self.tokenizer, ids))
                else:
                    outputs.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return outputs

    def to_sql(self, output: str, question: str | None = None) -> str:
        """A decoded output as SQL in the dataset's form (compact outputs are expanded).

        With the question, literals also go through value recovery (snapped to values the data
        holds or to the question's own words); without it only their casing is restored.
        """
        if self.meta["target_form"] == "compact":
            try:
                query = parse_compact(output)
            except FormError:
                return output  # not expandable: return it as it came, so evaluation counts it wrong
            # The compact form is lower-case: literals get their stored casing back.
            output = render_sql(self.values.recover_query(query, fuzzy=False) if self.values else query)
        return self.values.recover(output, question) if self.values and question else output

    def predict(self, questions: list[str], num_beams: int | None = None, batch_size: int = 32,
                recover: bool = True) -> list[str]:
        """SQL for each question; `recover=False` gives the model's output without value recovery."""
        outputs = self.generate(questions, num_beams, batch_size)
        return [self.to_sql(o, q if recover else None) for o, q in zip(outputs, questions, strict=True)]

    @staticmethod
    def pretty(sql: str) -> str:
        return sqlparse.format(sql, reindent=True, keyword_case="upper")


def _download_model_dir(uri: str) -> Path:
    """Fetch an MLflow pyfunc model logged by the train stage and return its model folder."""
    import mlflow

    from medsql import tracking

    tracking.configure()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:  # MLflow raises several types for missing models/aliases
        raise PredictorError(f"cannot load {uri}: {err}") from err
    found = sorted(local.rglob("medsql.json"))
    found = [p for p in found if p.parent.name != "baseline"]
    if not found:
        raise PredictorError(f"{uri} holds no medsql model folder")
    return found[0].parent
