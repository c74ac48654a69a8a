"""Frozen-backbone training: features once per image, then a softmax classifier on them.

With a pretrained backbone (EfficientNet-Lite0's packaged ImageNet weights) and a few
hundred photos per class, a multinomial logistic regression on the pooled features is
as accurate as fine-tuning (benchmarks/README.md, measured on validation folds) and
costs one forward pass per photo instead of tens of epochs. The regression (scikit-learn's
L-BFGS, deterministic) becomes the weights of the model's ``probs`` Dense layer, so the
exported model is the usual uint8-in, probabilities-out network.

Features are cached by the digest of the image's stored pixels (which the photo's
sha256 and the preprocessing settings determine) under a key naming the backbone, so a
retrain computes features only for photos it has not seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clazzify.core.errors import ConfigError, DataError
from clazzify.training.data import read_column, read_rows

CLASS_WEIGHTING = ("none", "balanced", "sqrt")


def class_weights(counts: Sequence[int], mode: str) -> dict[int, float]:
    """Loss weight per class index.

    ``balanced``: ``total / (classes x count)``, so every class weighs the same in the loss;
    ``sqrt``: the square root of that (half-way, in log terms, towards no weighting);
    ``none``: 1. Classes with no images get 0.

    Raises:
        ConfigError: unknown mode.
    """
    if mode not in CLASS_WEIGHTING:
        raise ConfigError(f"class_weighting must be one of {CLASS_WEIGHTING}, got {mode!r}")
    total, k = sum(counts), len(counts)
    out = {}
    for i, n in enumerate(counts):
        w = total / (k * n) if n else 0.0
        out[i] = 1.0 if mode == "none" and n else (float(np.sqrt(w)) if mode == "sqrt" else w)
    return out


def pixel_digests(images: np.ndarray) -> list[str]:
    """One short digest per image row (the cache key)."""
    return [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).hexdigest() for row in images]


@dataclass(frozen=True)
class ColumnScaling:
    """Standardisation of the feature columns from ``start`` on, fitted on the training
    features and folded into the classifier's weights afterwards, so the exported model
    reads its raw features. The taps' means and variances (``ModelSpec.taps``) live on
    scales far from the pooled features'; standardised, one L2 penalty suits them all.
    Columns that do not vary in training (a 1 px block at a tiny input) are ignored."""

    offset: np.ndarray  # [D]
    scale: np.ndarray  # [D]

    @classmethod
    def fit(cls, x: np.ndarray, start: int | None) -> ColumnScaling:
        d = x.shape[1]
        offset, scale = np.zeros(d, np.float64), np.ones(d, np.float64)
        if start is not None and start < d:
            tail = x[:, start:].astype(np.float64)
            sd = tail.std(0)
            offset[start:] = tail.mean(0)
            scale[start:] = np.where(sd > 1e-6, 1.0 / np.maximum(sd, 1e-6), 0.0)
        return cls(offset, scale)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.offset) * self.scale).astype(np.float32)

    def fold(self, kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``(kernel, bias)`` that give on raw features what ``kernel, bias`` give on
        :meth:`apply`'s."""
        folded = kernel.astype(np.float64) * self.scale[:, None]
        return folded.astype(np.float32), (bias - self.offset @ folded).astype(np.float32)


class FeatureCache:
    """``digest -> feature vector`` in one ``.npz`` file per backbone key, under ``folder``."""

    def __init__(self, folder: Path | str | None, key: str) -> None:
        self.path = Path(folder) / f"{key}.npz" if folder else None
        self.table: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                with np.load(self.path) as z:
                    self.table = dict(zip(z["digests"].tolist(), z["features"], strict=True))
            except (OSError, ValueError, KeyError) as e:
                raise DataError(f"feature cache {self.path} is unreadable ({e}): delete it to rebuild") from e

    def get(self, digest: str) -> np.ndarray | None:
        return self.table.get(digest)

    def put(self, digest: str, feature: np.ndarray) -> None:
        self.table[digest] = feature
        self.dirty = True

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial.npz")
        digests = list(self.table)
        np.savez(tmp, digests=np.array(digests), features=np.stack([self.table[d] for d in digests]))
        os.replace(tmp, self.path)


def image_features(features_model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``features [N, D]`` float32 of uint8 ``images`` already in memory (outlier photos,
    drawn graphics), ``batch_size`` at a time through the compiled graph."""
    return np.concatenate([
        np.asarray(features_model.predict_on_batch(images[i : i + batch_size].astype(np.float32)))
        for i in range(0, len(images), batch_size)]).astype(np.float32)


def extract_features(
    features_model,
    paths: Sequence[Path],
    *,
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, D] float32, labels [N])`` of every row of the HDF5 ``paths``.

    ``features_model`` maps float pixels in ``[0, 255]`` to features
    (:func:`clazzify.training.models.feature_model`).
    """
    labels = read_column(paths, "labels")
    n = len(labels)
    out: np.ndarray | None = None
    # A Keras model's predict_on_batch runs a compiled graph: 2-3x faster than an eager call.
    run = getattr(features_model, "predict_on_batch", None) or (lambda b: features_model(b, training=False))
    bar = tqdm(total=n, desc="features", unit="img", disable=not progress)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        images = read_rows(paths, rows)
        digests = pixel_digests(images) if cache else [None] * len(rows)
        hits = [cache.get(d) if cache else None for d in digests]
        todo = [i for i, h in enumerate(hits) if h is None]
        if todo:
            fresh = np.asarray(run(images[todo].astype(np.float32)))
            for i, f in zip(todo, fresh, strict=True):
                hits[i] = f
                if cache:
                    cache.put(digests[i], f.astype(np.float32))
        block = np.stack(hits).astype(np.float32)
        if out is None:
            out = np.empty((n, block.shape[1]), np.float32)
        out[rows] = block
        bar.update(len(rows))
    bar.close()
    if cache:
        cache.save()
    if out is None:
        raise DataError(f"no rows in {[str(p) for p in paths]}")
    return out, labels


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    class_weighting: str = "none",
    l2: float = 1.0,
    max_iter: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: ``(kernel [D, C], bias [C])`` for a softmax Dense layer.

    ``l2`` is the penalty strength (scikit-learn's ``1 / C``) on features standardised by
    nothing but themselves: the backbone's pooled ReLU6 features are already on one scale.

    Raises:
        DataError: a class has no training rows.
    """
    from sklearn.linear_model import LogisticRegression

    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise DataError(f"classes {np.flatnonzero(counts == 0).tolist()} have no training images")
    weights = class_weights(counts.tolist(), class_weighting)
    clf = LogisticRegression(C=1.0 / l2, max_iter=max_iter, class_weight=weights)
    clf.fit(features, labels)
    return clf.coef_.T.astype(np.float32), clf.intercept_.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
