"""The unknown decision every consumer shares: split outputs, flag, label."""

import numpy as np
import pytest

from clazzify.core.errors import DataError
from clazzify.core.ood import UNKNOWN, OodRule, flag_unknown, labels_with_unknown, split_outputs

pytestmark = pytest.mark.unit


def test_outlier_exposure_outputs_split_into_classes_and_a_score():
    raw = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]], np.float32)  # 2 classes + "not a class"
    probs, score = split_outputs(raw, 2, "outlier_exposure")
    np.testing.assert_allclose(probs, [[0.7 / 0.9, 0.2 / 0.9], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(score, [0.9, 0.1], rtol=1e-6)


def test_msp_is_the_top_probability():
    raw = np.array([[0.6, 0.4], [0.5, 0.5]], np.float32)
    probs, score = split_outputs(raw, 2)
    np.testing.assert_array_equal(probs, raw)
    np.testing.assert_allclose(score, [0.6, 0.5])


@pytest.mark.parametrize(("cols", "method"), [(3, "msp"), (2, "outlier_exposure")])
def test_wrong_output_width_is_refused(cols, method):
    with pytest.raises(DataError, match="got shape"):
        split_outputs(np.ones((1, cols)), 2, method)


def test_labels_flag_below_the_threshold_only():
    rule = OodRule("msp", threshold=0.55, false_flag_rate=0.02)
    probs = np.array([[0.6, 0.4], [0.45, 0.55], [0.52, 0.48]])
    scores = probs.max(1)
    assert labels_with_unknown(probs, scores, ["food", "menu"], rule) == ["food", "menu", UNKNOWN]
    assert labels_with_unknown(probs, scores, ["food", "menu"], None) == ["food", "menu", "food"]
    assert not flag_unknown(scores, None).any()


def test_rule_round_trips_and_refuses_nonsense():
    rule = OodRule("outlier_exposure", 0.4, 0.02, {"auroc": 0.99})
    assert OodRule.from_dict(rule.to_dict()) == rule
    assert OodRule.from_dict(None) is None
    with pytest.raises(DataError, match="unknown OOD method"):
        OodRule("magic", 0.5, 0.02)
    with pytest.raises(DataError, match="bad 'ood' entry"):
        OodRule.from_dict({"method": "msp"})
