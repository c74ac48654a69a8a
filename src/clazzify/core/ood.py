"""The "unknown" decision at prediction time, shared by evaluation, the model server and
the MLflow pyfunc, so every one of them flags the same photos with the same number.

A model trained with outlier exposure has one more output than it has classes, "not a
class" (the last column); any other model has exactly its classes. :func:`split_outputs`
turns either into the class probabilities (over the classes alone) and an
in-distribution score (higher = more like the training photos):

* ``outlier_exposure``: ``1 - p(not a class)``, the classes renormalised without it;
* ``msp``: the largest class probability (training-free: every model has it).

:class:`OodRule` is what the bundle records (``clazzify.json``'s ``ood``): the method, the
threshold set on in-distribution validation photos, and the false-flag rate it was set at.
A photo whose score is below the threshold is ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from clazzify.core.errors import DataError

#: The label of a flagged photo in predictions, scores and queues (never a class name).
UNKNOWN = "unknown"
#: The manual label moderators give a photo that is none of the classes: the next run
#: trains on it as an out-of-distribution example, never as a class.
NOT_A_CLASS = "not_a_class"
#: Methods whose score the model's own outputs carry (see the module docstring).
OUTPUT_METHODS = ("msp", "outlier_exposure")


@dataclass(frozen=True)
class OodRule:
    """How a model decides "none of the classes".

    Attributes:
        method: ``msp`` or ``outlier_exposure``.
        threshold: scores strictly below it are flagged.
        false_flag_rate: the share of in-distribution validation photos the threshold was
            set to flag.
        measured: what evaluation measured (AUROC, share caught, per category), for the
            gate report and the model card; informational.
    """

    method: str
    threshold: float
    false_flag_rate: float
    measured: dict | None = None

    def __post_init__(self) -> None:
        if self.method not in OUTPUT_METHODS:
            raise DataError(f"unknown OOD method {self.method!r}: expected one of {OUTPUT_METHODS}")
        if not np.isfinite(self.threshold):
            raise DataError(f"OOD threshold must be finite, got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> OodRule | None:
        if not raw:
            return None
        try:
            return cls(**raw)
        except TypeError as e:
            raise DataError(f"bad 'ood' entry in the model's metadata ({e}): {dict(raw)}") from e


def split_outputs(raw: np.ndarray, num_classes: int, method: str = "msp") -> tuple[np.ndarray, np.ndarray]:
    """``(class probabilities [N, C], in-distribution score [N])`` of a model's outputs.

    Raises:
        DataError: the outputs do not have ``num_classes`` (or, for outlier exposure,
            ``num_classes + 1``) columns.
    """
    raw = np.asarray(raw, np.float32)
    if method == "outlier_exposure":
        if raw.ndim != 2 or raw.shape[1] != num_classes + 1:
            raise DataError(f"an outlier-exposure model gives {num_classes} + 1 outputs, got shape {raw.shape}")
        rest = raw[:, :num_classes]
        total = rest.sum(axis=1, keepdims=True)
        probs = rest / np.maximum(total, 1e-12)
        return probs.astype(np.float32), np.clip(total[:, 0], 0.0, 1.0).astype(np.float32)
    if raw.ndim != 2 or raw.shape[1] != num_classes:
        raise DataError(f"the model gives {num_classes} class probabilities, got shape {raw.shape}")
    return raw, raw.max(axis=1)


def flag_unknown(scores: np.ndarray, rule: OodRule | None) -> np.ndarray:
    """Boolean mask of the photos the rule flags (none without a rule)."""
    scores = np.asarray(scores)
    if rule is None:
        return np.zeros(scores.shape, bool)
    return scores < rule.threshold


def labels_with_unknown(probs: np.ndarray, scores: np.ndarray, class_names: list[str],
                        rule: OodRule | None) -> list[str]:
    """The label of each photo: its top class, or :data:`UNKNOWN` where the rule flags it."""
    flags = flag_unknown(scores, rule)
    top = np.asarray(probs).argmax(axis=1)
    return [UNKNOWN if f else class_names[k] for k, f in zip(top, flags, strict=True)]


def rule_of(meta: Any) -> OodRule | None:
    """The unknown rule a bundle's metadata records (``BundleMeta.ood``), or None."""
    return OodRule.from_dict(getattr(meta, "ood", None))


def split_for(meta: Any, raw: np.ndarray, engine: str = "") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A model's raw outputs as ``(class probabilities [N, C], in-distribution scores [N],
    labels [N])`` under the rule its metadata records: what the model server answers, what
    evaluation scores and what the pyfunc returns, computed in this one place.

    ``meta`` is a :class:`clazzify.core.bundle.BundleMeta` (anything with ``class_names`` and
    ``ood``). A model without a rule gets the maximum softmax probability as its score and
    no photo flagged. An int8 ``engine`` uses the threshold the int8 export set on the int8
    model's own validation scores (``meta.int8["ood_threshold"]``): quantization moves the
    scores, so the float32 threshold would flag another share of photos.
    """
    rule = rule_of(meta)
    int8 = getattr(meta, "int8", None) or {}
    if rule is not None and "int8" in engine and int8.get("ood_threshold") is not None:
        rule = replace(rule, threshold=float(int8["ood_threshold"]))
    names = list(meta.class_names)
    probs, scores = split_outputs(raw, len(names), rule.method if rule else "msp")
    return probs, scores, labels_with_unknown(probs, scores, names, rule)
