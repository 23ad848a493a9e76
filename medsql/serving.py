"""The MLflow pyfunc model (models-from-code): a DataFrame of questions in, SQL strings out.

`mlflow.transformers` cannot log T5 text2text with transformers 5.x, so the train stage logs
this file as the model's code and the model folder as its artifact.

Under `mlflow models serve`, concurrent /invocations calls go through one medsql.batching engine:
their questions share generation calls, and past its limit a call is refused at once with
`503` (MLflow's TEMPORARILY_UNAVAILABLE) instead of queueing. A refused question (empty, too long,
not valid Unicode, control characters) or beam size (1 to 16) is a `400` naming it.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

MODEL = "model"


class MedsqlModel(PythonModel):
    def load_context(self, context) -> None:
        from medsql.batching import BatchEngine
        from medsql.predictor import Predictor

        self.predictor = Predictor(context.artifacts["model_dir"])
        self.engine = BatchEngine({MODEL: self.predictor})

    def predict(self, context, model_input, params=None) -> list[str]:
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
            return self.engine.predict(MODEL, questions, num_beams).outputs
        except (QuestionError, PredictorError) as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        except Overloaded as err:
            raise MlflowException(f"medsql: {err}", error_code=TEMPORARILY_UNAVAILABLE) from None


mlflow.models.set_model(MedsqlModel())
