"""The promotion gate: a pure decision on evaluation metrics, with its reasons."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from clazzify.core.errors import ConfigError


@dataclass(frozen=True)
class GateConfig:
    """Thresholds a challenger must meet.

    Attributes:
        min_accuracy: absolute floor on test accuracy, in [0, 1].
        max_regression: how much lower than the champion's accuracy (re-measured on
            the same test split) the challenger may be, in [0, 1].
        min_class_recall: recall floor applied to every class, in [0, 1]; on by default
            (0.5), so no class can be silently sacrificed to the average; 0 disables it.
        class_recall: per-class floors overriding ``min_class_recall`` ({class: floor}).
        min_class_precision: precision floor applied to every class, in [0, 1]: of the
            photos the model calls X, at least this share must be X, so no class becomes a
            dumping ground for the others' errors (0 disables it).
        class_precision: per-class floors overriding ``min_class_precision``.
        min_ood_catch_rate: the share of "not a class" photos the model's unknown rule must
            catch, as training cross-validated it by source (0 disables it; a model without
            that estimate then fails, so an OOD source must be given).
    """

    min_accuracy: float = 0.5
    max_regression: float = 0.0
    min_class_recall: float = 0.5
    class_recall: Mapping[str, float] = field(default_factory=dict)
    min_class_precision: float = 0.0
    class_precision: Mapping[str, float] = field(default_factory=dict)
    min_ood_catch_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "max_regression", "min_class_recall", "min_class_precision",
                     "min_ood_catch_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"gate threshold {name}={value} is outside [0, 1]")
        for kind, floors in (("recall", self.class_recall), ("precision", self.class_precision)):
            for cls, value in floors.items():
                if not 0.0 <= value <= 1.0:
                    raise ConfigError(f"gate {kind} floor for class {cls!r} = {value} is outside [0, 1]")

    def check_classes(self, class_names: Sequence[str]) -> None:
        """Fail loudly when a per-class floor names a class the model does not have."""
        unknown = sorted((set(self.class_recall) | set(self.class_precision)) - set(class_names))
        if unknown:
            raise ConfigError(
                f"gate names unknown class(es) {unknown}; the model's classes are {list(class_names)}"
            )


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger measured on the same photos, which neither trained on.

    Attributes:
        photos: test photos both were scored on.
        challenger_accuracy: the challenger's accuracy on them (by class name).
        champion_accuracy: the champion's accuracy on them (by class name).
        excluded_seen: test photos left out because the champion learned from them or from a
            near-duplicate of them (its train or val split).
        excluded_classes: test photos of a class one of the two models does not have.
        classes_added: classes the challenger has and the champion lacks.
        classes_removed: classes the champion has and the challenger lacks.
        champion_lineage: False when the champion recorded no training photos (registered
            before lineage was kept): then no photo could be excluded as seen.
    """

    photos: int
    challenger_accuracy: float
    champion_accuracy: float
    excluded_seen: int = 0
    excluded_classes: int = 0
    classes_added: list[str] = field(default_factory=list)
    classes_removed: list[str] = field(default_factory=list)
    champion_lineage: bool = True

    @property
    def class_set_changed(self) -> bool:
        return bool(self.classes_added or self.classes_removed)


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger may be registered, and why."""

    passed: bool
    reasons: list[str]
    challenger_accuracy: float
    champion_accuracy: float | None = None
    champion_version: str | None = None
    comparison: Comparison | None = None

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "verdict": self.verdict}, indent=2)


def passes_gate(
    accuracy: float,
    recall: Mapping[str, float],
    cfg: GateConfig,
    *,
    champion_accuracy: float | None = None,
    champion_version: str | None = None,
    comparison: Comparison | None = None,
    precision: Mapping[str, float] | None = None,
    ood_catch_rate: float | None = None,
) -> GateDecision:
    """Decide whether a challenger passes.

    Args:
        accuracy: challenger's test accuracy.
        recall: challenger's recall per class.
        cfg: thresholds.
        precision: challenger's precision per class; None skips the precision floors.
        champion_accuracy: the current champion's accuracy on the same test split,
            or None when there is no champion (absolute gate only); ignored when
            ``comparison`` is given.
        champion_version: for the report.
        comparison: both models on the test photos neither trained on; the regression
            check compares these two accuracies. The absolute thresholds always apply to
            the challenger's whole test split.
        ood_catch_rate: the share of "not a class" photos the challenger's unknown rule
            caught in training's cross-validation by source; None when it has none.

    Raises:
        ConfigError: the gate names a class the model does not have.
    """
    cfg.check_classes(list(recall))
    reasons: list[str] = []
    ok = True
    if accuracy >= cfg.min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} >= min_accuracy {cfg.min_accuracy:.4f}")
    else:
        ok = False
        reasons.append(f"accuracy {accuracy:.4f} < min_accuracy {cfg.min_accuracy:.4f}")
    for kind, values, default, overrides in (
        ("recall", recall, cfg.min_class_recall, cfg.class_recall),
        ("precision", precision, cfg.min_class_precision, cfg.class_precision),
    ):
        if values is None:
            continue
        floors = {cls: overrides.get(cls, default) for cls in values}
        below = [cls for cls in sorted(values) if floors[cls] and values[cls] < floors[cls]]
        for cls in below:
            ok = False
            reasons.append(f"{kind} of {cls!r} {values[cls]:.4f} < floor {floors[cls]:.4f}")
        floored = [cls for cls in values if floors[cls]]
        if floored and not below:
            # the class with the least room above its floor: what a reader wants to check
            tight = min(floored, key=lambda cls: (values[cls] - floors[cls], cls))
            reasons.append(
                f"every class's {kind} >= its floor "
                f"(closest: {tight!r} {values[tight]:.4f} >= {floors[tight]:.4f})"
            )
    if cfg.min_ood_catch_rate:
        if ood_catch_rate is None:
            ok = False
            reasons.append(f"min_ood_catch_rate {cfg.min_ood_catch_rate:.4f} is set, but the model has no "
                           "cross-validated catch rate: train it with an ood_source of two or more sources")
        else:
            caught = ood_catch_rate >= cfg.min_ood_catch_rate
            ok = ok and caught
            reasons.append(f"unknown catch rate {ood_catch_rate:.4f} {'>=' if caught else '<'} "
                           f"min_ood_catch_rate {cfg.min_ood_catch_rate:.4f}")
    if comparison is not None:
        if comparison.class_set_changed:
            reasons.append(
                f"the class set changed since champion v{champion_version}: added "
                f"{comparison.classes_added or 'none'}, removed {comparison.classes_removed or 'none'}; "
                "the comparison uses the shared classes only"
            )
        if not comparison.champion_lineage:
            reasons.append(
                f"champion v{champion_version} recorded no training photos (registered before lineage): "
                "the comparison cannot exclude what it trained on"
            )
        seen = f"{comparison.excluded_seen} test photos the champion trained on left out"
        if comparison.photos == 0:
            reasons.append(f"no test photo left to compare with champion v{champion_version} ({seen}): "
                           "absolute gate only")
            champion_accuracy = None
        else:
            floor = comparison.champion_accuracy - cfg.max_regression
            passed = comparison.challenger_accuracy >= floor
            ok = ok and passed
            reasons.append(
                f"on {comparison.photos} test photos neither model trained on ({seen}): accuracy "
                f"{comparison.challenger_accuracy:.4f} {'>=' if passed else '<'} champion v{champion_version} "
                f"{comparison.champion_accuracy:.4f} - max_regression {cfg.max_regression:.4f}"
            )
            champion_accuracy = comparison.champion_accuracy
    elif champion_accuracy is None:
        reasons.append("no champion yet: absolute gate only")
    else:
        floor = champion_accuracy - cfg.max_regression
        relation = ">=" if accuracy >= floor else "<"
        ok = ok and accuracy >= floor
        reasons.append(
            f"accuracy {accuracy:.4f} {relation} champion v{champion_version} "
            f"{champion_accuracy:.4f} - max_regression {cfg.max_regression:.4f}"
        )
    return GateDecision(ok, reasons, accuracy, champion_accuracy, champion_version, comparison)
