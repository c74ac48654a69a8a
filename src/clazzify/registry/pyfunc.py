"""The MLflow pyfunc flavour of a clazzify bundle (what ``mlflow models serve`` runs)."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

from clazzify.core.bundle import load_predictor


class ClazzifyModel(mlflow.pyfunc.PythonModel):
    """uint8 images ``[B, S, S, 3]`` -> class probabilities ``[B, C]`` via ONNX Runtime."""

    def load_context(self, context) -> None:
        self.predictor = load_predictor(Path(context.artifacts["bundle"]), "onnx")

    def predict(self, context, model_input, params=None):
        return self.predictor.predict(np.asarray(model_input, dtype=np.uint8))
