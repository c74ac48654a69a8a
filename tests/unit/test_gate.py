import pytest

from clazzify.core.errors import ConfigError
from clazzify.training.gate import Comparison, GateConfig, passes_gate

pytestmark = pytest.mark.unit

RECALL = {"food": 0.9, "menu": 0.8}

CASES = [
    # (accuracy, recall, config, champion accuracy, expected pass)
    (0.80, RECALL, GateConfig(min_accuracy=0.7), None, True),
    (0.60, RECALL, GateConfig(min_accuracy=0.7), None, False),
    (0.70, RECALL, GateConfig(min_accuracy=0.7), None, True),  # the floor itself passes
    (0.80, RECALL, GateConfig(min_accuracy=0.7), 0.85, False),  # worse than champion
    (0.80, RECALL, GateConfig(min_accuracy=0.7, max_regression=0.05), 0.85, True),
    (0.80, RECALL, GateConfig(min_accuracy=0.7, max_regression=0.04), 0.85, False),
    (0.90, RECALL, GateConfig(min_accuracy=0.7), 0.85, True),
    (0.90, RECALL, GateConfig(min_class_recall=0.85), None, False),  # menu 0.8 < 0.85
    (0.90, RECALL, GateConfig(class_recall={"menu": 0.75}), None, True),
    (0.90, RECALL, GateConfig(min_class_recall=0.85, class_recall={"menu": 0.75}), None, True),
    (0.90, RECALL, GateConfig(min_accuracy=0.95), 0.5, False),  # absolute floor still applies
]


@pytest.mark.parametrize(("acc", "recall", "cfg", "champion", "expected"), CASES)
def test_gate_table(acc, recall, cfg, champion, expected):
    decision = passes_gate(acc, recall, cfg, champion_accuracy=champion, champion_version="3")
    assert decision.passed is expected
    assert decision.verdict == ("pass" if expected else "fail")
    assert decision.reasons  # every decision explains itself
    if champion is None:
        assert any("no champion" in r for r in decision.reasons)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_accuracy": 1.5},
        {"min_accuracy": -0.1},
        {"max_regression": 2.0},
        {"min_class_recall": -1.0},
        {"class_recall": {"food": 1.2}},
    ],
)
def test_mis_set_gate_fails_loudly(kwargs):
    with pytest.raises(ConfigError):
        GateConfig(**kwargs)


def test_unknown_class_fails_loudly():
    with pytest.raises(ConfigError, match="unknown class"):
        passes_gate(0.9, RECALL, GateConfig(class_recall={"pizza": 0.5}))


def test_recall_floor_is_on_by_default():
    decision = passes_gate(0.95, {"food": 1.0, "ambiance": 0.3}, GateConfig(min_accuracy=0.9))
    assert not decision.passed
    assert any("'ambiance'" in r for r in decision.reasons)


def test_a_passing_recall_floor_names_the_class_closest_to_it():
    cfg = GateConfig(min_class_recall=0.5, class_recall={"menu": 0.75})
    decision = passes_gate(0.9, RECALL, cfg)  # food 0.9 vs 0.5, menu 0.8 vs 0.75
    assert decision.passed
    assert "every class's recall >= its floor (closest: 'menu' 0.8000 >= 0.7500)" in decision.reasons
    off = passes_gate(0.9, RECALL, GateConfig(min_class_recall=0.0))
    assert not any("floor" in r for r in off.reasons)  # no floor, nothing claimed


# The issue-15 champion: 56% of the photos it called ambiance were ambiance.
PRECISION = {"ambiance": 0.56, "food": 0.97, "human": 0.95, "menu": 0.99}
PRECISION_CASES = [
    # (config, precision, expected pass, reason fragment)
    (GateConfig(min_class_precision=0.8), PRECISION, False, "precision of 'ambiance' 0.5600 < floor 0.8000"),
    (GateConfig(min_class_precision=0.5), PRECISION, True, "closest: 'ambiance' 0.5600 >= 0.5000"),
    (GateConfig(min_class_precision=0.8, class_precision={"ambiance": 0.5}), PRECISION, True, "closest: 'ambiance'"),
    (GateConfig(min_class_precision=0.0), PRECISION, True, None),  # off
    (GateConfig(min_class_precision=0.99), None, True, None),  # no precision given: not checked
]


@pytest.mark.parametrize(("cfg", "precision", "expected", "fragment"), PRECISION_CASES)
def test_precision_floor(cfg, precision, expected, fragment):
    recall = {"ambiance": 1.0, "food": 0.9, "human": 0.9, "menu": 0.9}
    decision = passes_gate(0.9, recall, cfg, precision=precision)
    assert decision.passed is expected
    if fragment:
        assert any(fragment in r for r in decision.reasons), decision.reasons
    else:
        assert not any("precision" in r for r in decision.reasons)


def test_precision_floor_validation():
    with pytest.raises(ConfigError, match="min_class_precision"):
        GateConfig(min_class_precision=1.5)
    with pytest.raises(ConfigError, match="precision floor for class 'food'"):
        GateConfig(class_precision={"food": -0.1})
    with pytest.raises(ConfigError, match="pizza"):
        passes_gate(0.9, RECALL, GateConfig(class_precision={"pizza": 0.5}), precision=RECALL)


COMPARED = [
    # (whole-test accuracy, comparison, config, expected pass, a reason that must be given)
    (0.90, Comparison(100, 0.88, 0.90), GateConfig(min_accuracy=0.7), False, "on 100 test photos neither"),
    (0.90, Comparison(100, 0.88, 0.90), GateConfig(min_accuracy=0.7, max_regression=0.02), True, "0.8800 >="),
    (0.60, Comparison(100, 0.95, 0.90), GateConfig(min_accuracy=0.7), False, "< min_accuracy"),  # absolute
    (0.90, Comparison(0, 0.0, 0.0, excluded_seen=40), GateConfig(min_accuracy=0.7), True, "absolute gate only"),
    (0.90, Comparison(50, 0.9, 0.8, classes_added=["drinks"]), GateConfig(), True, "class set changed"),
    (0.90, Comparison(50, 0.9, 0.8, champion_lineage=False), GateConfig(), True, "recorded no training photos"),
]


@pytest.mark.parametrize(("acc", "comparison", "cfg", "expected", "says"), COMPARED)
def test_gate_compares_on_unseen_photos(acc, comparison, cfg, expected, says):
    decision = passes_gate(acc, RECALL, cfg, champion_version="3", comparison=comparison)
    assert decision.passed is expected
    assert any(says in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize(("caught", "floor", "passed", "says"), [
    (0.9, 0.0, True, None),  # off: nothing said
    (0.9, 0.8, True, "unknown catch rate 0.9000 >= min_ood_catch_rate 0.8000"),
    (0.7, 0.8, False, "unknown catch rate 0.7000 < min_ood_catch_rate 0.8000"),
    (None, 0.8, False, "no cross-validated catch rate"),
])
def test_the_gate_can_require_an_unknown_catch_rate(caught, floor, passed, says):
    decision = passes_gate(0.95, {"a": 0.9, "b": 0.9}, GateConfig(min_ood_catch_rate=floor), ood_catch_rate=caught)
    assert decision.passed is passed
    matching = [r for r in decision.reasons if "catch rate" in r]
    assert (says is None and not matching) or (says is not None and says in matching[0])
