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
