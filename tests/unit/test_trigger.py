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


def test_retrain_check_reads_label_times_through_the_reader_it_is_given(tmp_path):
    """The setup both the component and `clazzify retrain` call; with both thresholds off it
    decides without counting, but still needs a reader for a database."""
    from clazzify.training.trigger import RetrainPolicy, retrain_check

    asked = []

    def reader(url, not_a_class=False):
        asked.append((url, not_a_class))
        return []

    decision = retrain_check(str(tmp_path), RetrainPolicy(0, 0), "m", f"sqlite:///{tmp_path / 'm.db'}",
                             labels_from="sqlite:///s.db", read_manual_labels=reader)
    assert decision.retrain and asked == [("sqlite:///s.db", False), ("sqlite:///s.db", True)]
    with pytest.raises(ConfigError, match="needs a manual-label reader"):
        retrain_check(str(tmp_path), RetrainPolicy(0, 0), "m", "sqlite:///x.db", labels_from="sqlite:///s.db")


def test_not_a_class_marks_count_as_new_labels_and_apart(tmp_path):
    """A moderator's "not a class" mark is a label the next run learns from (an OOD
    example): it counts toward min_new_labels, and the report says how many were marks."""
    from datetime import UTC, datetime, timedelta

    from clazzify.core.imaging import content_hash
    from clazzify.training.lineage import DatasetLineage
    from clazzify.training.trigger import gather_evidence

    photo = tmp_path / "food" / "a.png"
    photo.parent.mkdir()
    photo.write_bytes(b"not decoded: the trigger hashes bytes")

    created = datetime(2026, 12, 1, tzinfo=UTC)
    lineage = DatasetLineage.from_rows([(content_hash(photo.read_bytes()), "train", "food", "folder", "")],
                                       created.isoformat())
    before, after = created - timedelta(days=1), created + timedelta(hours=1)
    evidence = gather_evidence(str(tmp_path), ("7", lineage), [before, after], mark_times=[after, after, before],
                               progress=False)
    assert (evidence.new_photos, evidence.new_labels, evidence.new_not_a_class) == (0, 3, 2)
    decision = should_retrain(evidence, RetrainPolicy(100, 3))
    assert decision.retrain and "3 new manual labels (2 of them 'not a class') >= min_new_labels 3" in decision.reason
