"""Temperature scaling and ECE."""

import numpy as np
import pytest

from clazzify.core.errors import DataError
from clazzify.training.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from clazzify.training.head import softmax

pytestmark = pytest.mark.unit


def _sample(n=4000, k=4, true_t=1.0, seed=0):
    """Labels drawn from softmax(z / true_t): a model outputting softmax(z) has temperature true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, k))
    p_true = softmax(z / true_t)
    labels = np.array([rng.choice(k, p=p) for p in p_true])
    return softmax(z), labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature(true_t):
    probs, labels = _sample(true_t=true_t)
    assert fit_temperature(probs, labels) == pytest.approx(true_t, rel=0.12)


def test_scaling_keeps_the_argmax_and_lowers_ece_of_an_overconfident_model():
    probs, labels = _sample(true_t=2.5, seed=1)
    t = fit_temperature(probs, labels)
    calibrated = apply_temperature(probs, t)
    np.testing.assert_array_equal(calibrated.argmax(1), probs.argmax(1))
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    assert expected_calibration_error(labels, calibrated) < expected_calibration_error(labels, probs) / 2
    assert negative_log_likelihood(calibrated, labels) < negative_log_likelihood(probs, labels)


def test_bad_shapes_are_named():
    with pytest.raises(DataError, match="labels must be in"):
        fit_temperature(np.full((2, 3), 1 / 3), np.array([0, 3]))
    with pytest.raises(DataError, match=r"\[N, C\]"):
        fit_temperature(np.full((2, 3), 1 / 3), np.array([0]))
