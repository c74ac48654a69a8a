import pytest

from clazzify.core.errors import ConfigError
from clazzify.training.trigger import Evidence, RetrainPolicy, should_retrain

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("new_photos", "new_labels", "min_photos", "min_labels", "retrain", "says"),
    [
        (None, None, 1000, 100, True, "no champion"),
        (0, 0, 1000, 100, False, "0 new photos"),
        (999, 99, 1000, 100, False, "999 new photos"),
        (1000, 0, 1000, 100, True, "1000 new photos >= min_new_photos 1000"),
        (5, 100, 1000, 100, True, "100 new manual labels >= min_new_labels 100"),
        (5, None, 1000, 100, False, "0 new manual labels"),  # no labels database given
        (5000, 0, 0, 100, False, "< off"),  # the photo condition is off
        (0, 3, 1000, 0, False, "< off"),  # the label condition is off
        (0, 0, 0, 0, True, "both thresholds are off"),
    ],
)
def test_should_retrain(new_photos, new_labels, min_photos, min_labels, retrain, says):
    decision = should_retrain(Evidence(new_photos, new_labels, "3"), RetrainPolicy(min_photos, min_labels))
    assert decision.retrain is retrain
    assert says in decision.reason


def test_negative_thresholds_are_refused():
    with pytest.raises(ConfigError, match="min_new_labels"):
        RetrainPolicy(10, -1)
