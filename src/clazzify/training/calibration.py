"""Temperature scaling (Guo et al. 2017) and the expected calibration error.

A network's softmax is often over-confident; dividing its logits by one scalar ``T``
fitted on validation data (minimum negative log-likelihood) fixes most of that without
changing any prediction's argmax. Softmax probabilities are enough: ``log p`` differs from
the logits by a per-row constant, which the softmax ignores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clazzify.core.errors import DataError

#: Temperatures searched (log-uniform); beyond these the model is broken, not mis-calibrated.
T_MIN, T_MAX = 0.05, 20.0
#: Standard deviation of the log-normal prior on T (centred on 1). Without it a validation
#: split the model gets entirely right has no NLL minimum (T -> 0, every probability -> 1),
#: which would empty the moderators' low-confidence queue; with a few hundred rows and
#: some errors the data outweigh it.
PRIOR_SIGMA = 1.0
_EPS = 1e-12


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels) or not len(labels):
        raise DataError(f"need probabilities [N, C] and N labels, got {probs.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise DataError(f"labels must be in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}")
    return probs, labels


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: the probabilities the model gives with its logits divided by T."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    probs, labels = _check(probs, labels)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0))))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in ``[T_MIN, T_MAX]`` that minimises validation NLL of ``apply_temperature``
    plus a weak log-normal prior (:data:`PRIOR_SIGMA`): the maximum a posteriori T.

    Raises:
        DataError: shapes or labels that do not fit.
    """
    from scipy.optimize import minimize_scalar

    probs, labels = _check(probs, labels)
    n = len(labels)

    def objective(log_t: float) -> float:
        nll = negative_log_likelihood(apply_temperature(probs, float(np.exp(log_t))), labels)
        return nll + log_t**2 / (2 * PRIOR_SIGMA**2 * n)

    res = minimize_scalar(
        objective,
        bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded", options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))


def expected_calibration_error(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| over ``bins`` equal-width confidence bins, weighted by
    how many predictions fall in each (0 for no rows)."""
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return 0.0
    probs, labels = _check(probs, y_true)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)
