import pytest

from clazzify.training.stats import wilson_interval

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (196, 198, 0.9639, 0.9972),   # the benchmark's test split
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_matches_reference_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_evaluation_reports_intervals():
    import numpy as np

    from clazzify.training.evaluate import compute_metrics

    y = np.array([0] * 9 + [1] * 10)
    probs = np.eye(2)[np.array([0] * 8 + [1] + [1] * 10)]  # one class-0 photo called 1
    m = compute_metrics(y, probs, ["a", "b"])
    assert m.accuracy_interval == wilson_interval(18, 19)
    assert m.recall_interval["a"] == wilson_interval(8, 9)
    assert m.precision_interval["b"] == wilson_interval(10, 11)
    assert m.flat()["test_accuracy_low"] == m.accuracy_interval[0]


def test_gate_report_and_model_card_carry_the_intervals():
    import numpy as np

    from clazzify.training.evaluate import compute_metrics, gate_markdown, model_card
    from clazzify.training.gate import GateConfig, passes_gate

    y = np.array([0] * 9 + [1] * 10)
    m = compute_metrics(y, np.eye(2)[np.array([0] * 8 + [1] + [1] * 10)], ["a", "b"])
    decision = passes_gate(m.accuracy, m.recall, GateConfig(), precision=m.precision)
    lo, hi = wilson_interval(18, 19)
    for text in (gate_markdown(decision, m), model_card(m, decision, None, "clazzify")):
        assert f"{lo:.3f}-{hi:.3f}" in text
        assert "| a | 1.000 (0.676-1.000) | 0.889 (0.565-0.980) |" in text
