"""The MLflow pyfunc model (models-from-code): a DataFrame of questions in, a DataFrame of answers out.

`mlflow.transformers` cannot log T5 text2text with transformers 5.x, so the train stage logs
this file as the model's code and the model folder as its artifact.

One row per question, in order, with the columns of `medsql.confidence.Answer.as_record()`: `sql`,
`confidence` (the estimated probability that the SQL is right), `uncertain` (below the model's
min_confidence, or the SQL departs from the question: check it before use), `grounded`,
`problems` (why not grounded, as text), `mended` (what was changed in the model's candidate, where
grounded decoding mended it: medsql.grounding.mended), `alternatives` (the next candidates, JSON text:
[{"sql": ..., "confidence": ...}]), `calibrated`;
and `explanation`, the SQL's plain-English reading (medsql.explain; empty when the SQL is outside
the dataset's grammar). Over HTTP, /invocations returns them as
{"predictions": [{"sql": ..., "confidence": ..., ...}, ...]}.

Under `mlflow models serve`, concurrent /invocations calls go through one medsql.batching engine:
their questions share generation calls, and past its limit a call is refused at once with
`503` (MLflow's TEMPORARILY_UNAVAILABLE) instead of queueing. A refused question (empty, too long,
not valid Unicode, control characters) or beam size (1 to 16) is a `400` naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    from medsql.confidence import Answer

MODEL = "model"
# The output columns, in order: Answer.as_record()'s, then the reading (an empty input still gets them).
COLUMNS = ["sql", "confidence", "uncertain", "grounded", "problems", "mended", "alternatives", "calibrated",
           "explanation"]


def answer_rows(answers: list[Answer]) -> list[dict[str, Any]]:
    """Each Answer as one output row: its record and its plain-English reading."""
    from medsql.explain import explain_sql

    return [answer.as_record() | {"explanation": explain_sql(answer.sql) or ""} for answer in answers]


class MedsqlModel(PythonModel):
    def load_context(self, context) -> None:
        from medsql.batching import BatchEngine
        from medsql.predictor import Predictor

        self.predictor = Predictor(context.artifacts["model_dir"])
        self.engine = BatchEngine({MODEL: self.predictor})

    # No type hints on model_input: MLflow would read them as the input's schema (the signature says it).
    def predict(self, context, model_input, params=None):
        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

        from medsql.batching import Overloaded
        from medsql.predictor import PredictorError, check_beams
        from medsql.text import QuestionError

        column = "question" if "question" in model_input.columns else model_input.columns[0]
        questions = list(model_input[column])
        try:
            num_beams = check_beams((params or {}).get("num_beams"))
            self.predictor.model_inputs(questions)  # refused here, before it can share a batch
            answers = self.engine.predict(MODEL, questions, num_beams).outputs
        except (QuestionError, PredictorError) as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        except Overloaded as err:
            raise MlflowException(f"medsql: {err}", error_code=TEMPORARILY_UNAVAILABLE) from None
        return pd.DataFrame(answer_rows(answers), columns=COLUMNS)


mlflow.models.set_model(MedsqlModel())
