"""The drift watch's Prometheus rules, generated from the model's training mix.

:func:`prometheus_rule` builds the ``PrometheusRule`` (prometheus-operator) that
``manifests/monitoring/prometheus-rules.yaml`` holds; ``clazzify drift-rules`` writes it. The
training mix lives in the rule file as one recording rule per class
(``clazzify:training_share{model_name, label}``): Prometheus then needs nothing but the
workers' own metrics (:mod:`clazzify.scoring.metrics`), and a new champion trained on
another mix is one regenerated file. Three alerts, per model name and version:

- ``ClazzifyClassMixDrift``: the population stability index of the predicted class mix over
  the last hour against the training mix, ``PSI = sum_i (a_i - e_i) ln(a_i / e_i)``, stays
  above ``psi_threshold`` (0.2: the usual "significant shift") for ``psi_for``.
- ``ClazzifyUnknownRateSpike``: the share of photos flagged unknown over 15 minutes is above
  both ``unknown_floor`` and ``unknown_factor`` times its one-day share.
- ``ClazzifyConfidenceDrop``: the mean top probability over 15 minutes is
  ``confidence_drop`` below its one-day mean.

Each alert waits for a minimum volume, so a quiet night with a dozen photos cannot page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from clazzify.core.errors import ConfigError, DataError
from clazzify.core.manifest import read_manifest_rows

PREDICTIONS = "clazzify_worker_predictions_total"
CONFIDENCE = "clazzify_worker_confidence"
BY = "model_name, model_version"


@dataclass(frozen=True)
class DriftRuleConfig:
    """Thresholds of the drift alerts (see the module doc)."""

    model_name: str = "clazzify"
    psi_threshold: float = 0.2
    psi_for: str = "30m"
    psi_min_photos: int = 200
    unknown_factor: float = 3.0
    unknown_floor: float = 0.05
    unknown_for: str = "15m"
    confidence_drop: float = 0.10
    confidence_for: str = "15m"
    min_photos_15m: int = 50

    def __post_init__(self) -> None:
        if self.psi_threshold <= 0:
            raise ConfigError(f"psi_threshold must be > 0, got {self.psi_threshold}")
        if not 0 < self.unknown_floor < 1 or self.unknown_factor < 1:
            raise ConfigError(
                f"need 0 < unknown_floor < 1 and unknown_factor >= 1, got {self.unknown_floor}, "
                f"{self.unknown_factor}"
            )
        if not 0 < self.confidence_drop < 1:
            raise ConfigError(f"confidence_drop must be in (0, 1), got {self.confidence_drop}")


def training_mix(counts: Mapping[str, int]) -> dict[str, float]:
    """Class shares from class counts, rounded to 4 decimals, in class order.

    Raises:
        DataError: no class, or a count that is not positive.
    """
    bad = {k: v for k, v in counts.items() if int(v) <= 0}
    if not counts or bad:
        raise DataError(
            f"the training mix needs a positive photo count per class, got {dict(counts)}"
        )
    total = sum(int(v) for v in counts.values())
    return {k: round(int(counts[k]) / total, 4) for k in sorted(counts)}


def class_counts_from_manifest(uri: str) -> dict[str, int]:
    """Photos per ``label`` of a ``uri,label`` training manifest (CSV or JSONL)."""
    return dict(Counter(row.get("label") for row in read_manifest_rows(uri, ("label",))))


def parse_class_counts(text: str) -> dict[str, int]:
    """``food=470,human=415`` -> ``{"food": 470, "human": 415}``.

    Raises:
        DataError: a pair is not ``class=count`` with a whole number.
    """
    counts: dict[str, int] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise DataError(f"class count {pair!r} is not class=count, e.g. food=470")
        counts[name.strip()] = int(value)
    return counts


def rule_groups(mix: Mapping[str, float], cfg: DriftRuleConfig = DriftRuleConfig()) -> list[dict]:
    """The rule groups (what ``promtool test rules`` reads, and the PrometheusRule's spec)."""
    training = [
        {
            "record": "clazzify:training_share",
            "expr": f"vector({share})",
            "labels": {"model_name": cfg.model_name, "label": name},
        }
        for name, share in mix.items()
    ]
    volume_15m = f"clazzify:predictions:rate15m * 900 >= {cfg.min_photos_15m}"
    recording = [
        {"record": "clazzify:predictions_by_class:rate1h",
         "expr": f"sum by ({BY}, label) (rate({PREDICTIONS}[1h]))"},
        {"record": "clazzify:predictions:rate1h",
         "expr": f"sum by ({BY}) (rate({PREDICTIONS}[1h]))"},
        {"record": "clazzify:predictions:rate15m",
         "expr": f"sum by ({BY}) (rate({PREDICTIONS}[15m]))"},
        # Shares among the photos scored as one of the classes ("unknown" has its own alert).
        {"record": "clazzify:class_share:1h",
         "expr": ('clazzify:predictions_by_class:rate1h{label!="unknown"}\n'
                  "  / ignoring(label) group_left\n"
                  f'sum by ({BY}) (clazzify:predictions_by_class:rate1h{{label!="unknown"}})')},
        # PSI; a class never predicted counts as 0.1% so its term stays finite.
        {"record": "clazzify:class_psi:1h",
         "expr": (f"sum by ({BY}) (\n"
                  "  (clazzify:class_share:1h - on(model_name, label) group_left "
                  "clazzify:training_share)\n"
                  "  * ln(clamp_min(clazzify:class_share:1h, 0.001)"
                  " / on(model_name, label) group_left clazzify:training_share)\n)")},
    ]
    for window in ("15m", "1d"):
        recording += [
            {"record": f"clazzify:unknown_rate:{window}",
             "expr": (f'sum by ({BY}) (rate({PREDICTIONS}{{label="unknown"}}[{window}]))\n'
                      f"  / sum by ({BY}) (rate({PREDICTIONS}[{window}]))")},
            {"record": f"clazzify:mean_confidence:{window}",
             "expr": (f"sum by ({BY}) (rate({CONFIDENCE}_sum[{window}]))\n"
                      f"  / sum by ({BY}) (rate({CONFIDENCE}_count[{window}]))")},
        ]
    alerts = [
        {
            "alert": "ClazzifyClassMixDrift",
            "expr": (f"clazzify:class_psi:1h > {cfg.psi_threshold}\n"
                     f"and on({BY}) clazzify:predictions:rate1h * 3600 >= {cfg.psi_min_photos}"),
            "for": cfg.psi_for,
            "labels": {"severity": "warning", "team": "ml"},
            "annotations": {
                "summary": "{{ $labels.model_name }} v{{ $labels.model_version }}: the class mix "
                           "has left the training mix",
                "description": "Population stability index of the last hour's predicted classes "
                               "against the training mix is {{ $value | printf \"%.2f\" }} "
                               f"(alert above {cfg.psi_threshold}). A new upload source, an app "
                               "release or a broken camera path: look at Stats in the review app.",
                "runbook": "docs/monitoring.md#class-mix-drift",
            },
        },
        {
            "alert": "ClazzifyUnknownRateSpike",
            "expr": (f"clazzify:unknown_rate:15m > clamp_min({cfg.unknown_factor} * "
                     f"clazzify:unknown_rate:1d, {cfg.unknown_floor})\n"
                     f"and on({BY}) {volume_15m}"),
            "for": cfg.unknown_for,
            "labels": {"severity": "warning", "team": "ml"},
            "annotations": {
                "summary": "{{ $labels.model_name }} v{{ $labels.model_version }}: many uploads "
                           "are none of the classes",
                "description": "{{ $value | humanizePercentage }} of the last 15 minutes' photos "
                               f"were flagged unknown (alert above {cfg.unknown_factor:g}x the "
                               f"day's share and {cfg.unknown_floor:.0%}). See the review queue "
                               "'Not one of the classes'.",
                "runbook": "docs/monitoring.md#unknown-rate-spike",
            },
        },
        {
            "alert": "ClazzifyConfidenceDrop",
            "expr": (f"clazzify:mean_confidence:15m < clazzify:mean_confidence:1d - "
                     f"{cfg.confidence_drop}\nand on({BY}) {volume_15m}"),
            "for": cfg.confidence_for,
            "labels": {"severity": "warning", "team": "ml"},
            "annotations": {
                "summary": "{{ $labels.model_name }} v{{ $labels.model_version }}: the model is "
                           "less sure than usual",
                "description": "Mean top probability over 15 minutes is "
                               "{{ $value | printf \"%.2f\" }}, more than "
                               f"{cfg.confidence_drop} below the day's mean.",
                "runbook": "docs/monitoring.md#confidence-drop",
            },
        },
    ]
    return [
        {"name": "clazzify-training-mix", "rules": training},
        {"name": "clazzify-drift", "interval": "1m", "rules": recording + alerts},
    ]


def prometheus_rule(
    mix: Mapping[str, float], cfg: DriftRuleConfig = DriftRuleConfig(), *, name: str = "clazzify-drift"
) -> dict[str, Any]:
    """The ``PrometheusRule`` object (monitoring.coreos.com/v1) holding :func:`rule_groups`."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "clazzify-drift", "role": "alert-rules"},
        },
        "spec": {"groups": rule_groups(mix, cfg)},
    }


HEADER = """\
# The drift watch: recording rules and alerts over the scoring workers' metrics.
# Generated by `clazzify drift-rules` from the champion's training mix; regenerate it when a
# model trained on another mix is promoted (docs/monitoring.md). Needs prometheus-operator
# (the PrometheusRule CRD) and a Prometheus that selects rules labelled role: alert-rules.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks (``|``), as a person would write them."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render(mix: Mapping[str, float], cfg: DriftRuleConfig = DriftRuleConfig()) -> str:
    """The manifest file's text: a header comment, then the PrometheusRule as YAML."""
    body = yaml.dump(prometheus_rule(mix, cfg), Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER + body
