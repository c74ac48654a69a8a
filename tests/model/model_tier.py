"""What the model tier's tests share: the model under test and how a photo is encoded."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ModelUnderTest:
    bundle_dir: Path
    predictor: object  # clazzify.core.bundle.Predictor
    image_size: int
    class_names: list[str]

    def predict(self, encoded: list[bytes]) -> np.ndarray:
        """Probabilities for encoded photos, through the training/serving decode path."""
        from clazzify.core.imaging import image_to_array

        batch = np.stack([image_to_array(data, self.image_size) for data in encoded])
        return self.predictor.predict(batch)


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}) | kwargs)
    return buf.getvalue()
