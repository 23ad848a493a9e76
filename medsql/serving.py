"""The MLflow pyfunc model (models-from-code): a DataFrame of questions in, SQL strings out.

`mlflow.transformers` cannot log T5 text2text with transformers 5.x, so the train stage logs
this file as the model's code and the model folder as its artifact.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class MedsqlModel(PythonModel):
    def load_context(self, context) -> None:
        from medsql.predictor import Predictor

        self.predictor = Predictor(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None) -> list[str]:
        column = "question" if "question" in model_input.columns else model_input.columns[0]
        num_beams = (params or {}).get("num_beams")
        return self.predictor.predict([str(q) for q in model_input[column]], num_beams=num_beams)


mlflow.models.set_model(MedsqlModel())
