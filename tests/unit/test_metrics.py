import numpy as np
import pytest

from clazzify.core.errors import DataError
from clazzify.training.evaluate import compute_metrics, expected_calibration_error

pytestmark = pytest.mark.unit


def onehot(pred, k, p=0.9):
    probs = np.full((len(pred), k), (1 - p) / (k - 1))
    probs[np.arange(len(pred)), pred] = p
    return probs


def test_metrics_match_hand_counts():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    m = compute_metrics(y, onehot(pred, 3), ["a", "b", "c"])
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m.recall == {"a": pytest.approx(2 / 3), "b": 0.5, "c": 1.0}
    assert m.precision == {"a": 1.0, "b": 0.5, "c": 0.5}
    assert m.f1["a"] == pytest.approx(0.8)
    assert m.support == {"a": 3, "b": 2, "c": 1}


def test_class_never_predicted_has_zero_precision_not_nan():
    m = compute_metrics(np.array([0, 1]), onehot(np.array([0, 0]), 2), ["a", "b"])
    assert m.precision["b"] == 0.0 and m.recall["b"] == 0.0 and m.f1["b"] == 0.0


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    y = np.array([0, 1] * 50)
    calibrated = np.tile([[0.5, 0.5]], (100, 1))
    assert expected_calibration_error(y, calibrated) == pytest.approx(0.0, abs=1e-9)
    wrong = onehot(1 - y, 2, p=0.99)
    assert expected_calibration_error(y, wrong) == pytest.approx(0.99)


def test_shape_mismatch_is_an_error():
    with pytest.raises(DataError):
        compute_metrics(np.array([0, 1]), np.ones((2, 3)), ["a", "b"])
