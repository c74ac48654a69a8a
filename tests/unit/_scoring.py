"""Test doubles for the scoring tests: an in-process scorer and tiny images.

The scorer answers like the model server does: it decodes every image with
``clazzify.core.imaging.image_to_array`` and rejects the whole request with a permanent
(HTTP 400-like) error when one image is bad, so ``process_batch`` must isolate it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clazzify.core.errors import ImageError
from clazzify.core.imaging import image_to_array
from clazzify.scoring.endpoint_client import EndpointError, Prediction

CLASSES = ("ambiance", "food", "human", "menu")
#: FakeScorer(ood=True) flags photos whose logits spread less than this (greyish ones).
OOD_THRESHOLD = 0.5


def png_bytes(colour: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_images(root: Path, n: int, prefix: str = "img") -> list[Path]:
    """``n`` small PNGs of different colours under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"{prefix}{i:03d}.png"
        path.write_bytes(png_bytes(((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)))
        paths.append(path)
    return paths


class FakeScorer:
    """Scores by colour: probabilities are a softmax of a few pixel statistics."""

    def __init__(self, version: str = "3", name: str = "clazzify", ood: bool = False) -> None:
        self.version = version
        self.name = name
        self.down = False
        self.calls: list[int] = []
        #: Answer like a model with an out-of-distribution score: colourfulness (the spread
        #: of the channel means) is the in-distribution score; a grey photo is "unknown".
        self.ood = ood

    def infer(self, images: Sequence[bytes]) -> Prediction:
        self.calls.append(len(images))
        if self.down:
            raise EndpointError("transient", "cannot reach model server: ConnectError", None)
        rows = []
        for i, data in enumerate(images):
            try:
                pixels = image_to_array(data, 32).astype(np.float32) / 255.0
            except ImageError as e:
                raise EndpointError("permanent", f"HTTP 400: image {i}: {e}", 400) from e
            means = pixels.mean(axis=(0, 1))
            logits = np.array([means[0], means[1], means[2], 1.0 - means.mean()]) * 4
            rows.append(np.exp(logits) / np.exp(logits).sum())
        probs = np.array(rows, dtype=np.float32)
        if not self.ood:
            return Prediction(self.name, self.version, CLASSES, probs)
        score = np.array([float(np.ptp(np.log(r[:3]))) for r in rows])
        return Prediction(self.name, self.version, CLASSES, probs,
                          unknown=score < OOD_THRESHOLD, in_distribution_score=score)
