"""The MLflow pyfunc flavour of a clazzify bundle: what ``mlflow models serve`` runs.

It takes what the model server's V1 endpoint takes, encoded images as base64 strings in a
``b64`` column, so ``{"instances": [{"b64": "<jpeg/png/webp>"}]}`` is one request body for
both, and decodes them with the function that built the training data.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from clazzify.core.bundle import load_predictor
from clazzify.core.errors import DataError, ImageError
from clazzify.core.imaging import image_to_array
from clazzify.core.ood import rule_of, split_for

#: The input column: base64 strings of encoded images (KServe V1's ``b64`` key).
INPUT_COLUMN = "b64"


def b64_column(model_input: Any) -> list[str]:
    """The base64 strings of a pyfunc input: a DataFrame with a ``b64`` column (what the
    scoring server builds from ``instances``/``inputs``/``dataframe_split``), a dict or a
    list of strings.

    Raises:
        DataError: no ``b64`` column, or a value that is not a string.
    """
    if hasattr(model_input, "columns"):
        if INPUT_COLUMN not in model_input.columns:
            raise DataError(f"input has columns {list(model_input.columns)}: send the encoded "
                             f"images as base64 strings in a {INPUT_COLUMN!r} column")
        values = model_input[INPUT_COLUMN].tolist()
    elif isinstance(model_input, dict):
        values = list(model_input.get(INPUT_COLUMN) or [])
    else:
        values = list(model_input)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(f"image {i} is {type(v).__name__}, not a base64 string")
    return values


def decode_images(values: Sequence[str], image_size: int) -> np.ndarray:
    """uint8 ``[N, S, S, 3]`` pixels of base64-encoded images (as training decoded them).

    Raises:
        ImageError: bad base64 or an undecodable image, naming which one.
    """
    rows = []
    for i, value in enumerate(values):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError("bad_base64", f"image {i} is not valid base64: {e}") from e
        try:
            rows.append(image_to_array(data, image_size))
        except ImageError as e:
            raise ImageError(e.reason, f"image {i}: {e}") from e
    return np.stack(rows) if rows else np.zeros((0, image_size, image_size, 3), np.uint8)


class ClazzifyPyfunc(mlflow.pyfunc.PythonModel):
    """Base64-encoded photos -> top label, its probability and every class's probability,
    via ONNX Runtime on the bundle logged as the ``bundle`` artifact."""

    def load_context(self, context) -> None:
        self.predictor = load_predictor(Path(context.artifacts["bundle"]), "onnx")

    def predict(self, context, model_input, params=None):
        import pandas as pd

        meta = self.predictor.meta
        pixels = decode_images(b64_column(model_input), meta.image_size)
        if len(pixels):
            probs, scores, labels = split_for(meta, self.predictor.predict(pixels))
        else:
            probs, scores, labels = np.zeros((0, len(meta.class_names)), np.float32), np.zeros(0, np.float32), []
        top = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
        out = pd.DataFrame(probs.astype(np.float64), columns=list(meta.class_names))
        out.insert(0, "probability", probs[np.arange(len(probs)), top].astype(np.float64))
        out.insert(0, "label", labels)  # the top class, or "unknown" where the model's rule flags it
        if rule_of(meta) is not None:
            out["in_distribution_score"] = np.asarray(scores, np.float64)
        return out
