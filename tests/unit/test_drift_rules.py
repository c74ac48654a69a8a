"""The drift watch's Prometheus rules fire on a recorded drift and stay quiet on a steady stream.

The rules are the ones in ``manifests/monitoring/prometheus-rules.yaml`` (checked to be what
``clazzify drift-rules`` generates), run by ``promtool test rules`` (Debian/Ubuntu package
``prometheus``; the test skips, saying so, where promtool is absent) on two recorded streams
of the workers' metrics: version 1 steady for 27 hours, version 2 steady for a day and then
flooded by one class, many unknown photos and a lower confidence.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from clazzify.core.errors import DataError
from clazzify.scoring import drift_rules

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "monitoring" / "prometheus-rules.yaml"
#: The default dataset's class counts (../shared/datasets/restaurant-photos/manifest.csv).
COUNTS = {"ambiance": 178, "food": 470, "human": 415, "menu": 216}
ALERTS = ("ClazzifyClassMixDrift", "ClazzifyUnknownRateSpike", "ClazzifyConfidenceDrop")

#: Photos per minute: (ambiance, food, human, menu, unknown) and the mean top probability.
STEADY = ((14, 37, 33, 17, 2), 0.90)
DRIFT = ((3, 80, 10, 2, 30), 0.60)
STEADY_MIN, DRIFT_MIN = 24 * 60, 3 * 60


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool not found: `apt-get install -y prometheus` ships it (Debian/Ubuntu)")
    return found


def _stream(version: str, minutes: list[tuple[tuple[int, ...], float]], seed: int) -> list[dict]:
    """Cumulative counters, one sample a minute, each increment jittered by up to +-25%."""
    rng = random.Random(seed)
    labels = ("ambiance", "food", "human", "menu", "unknown")
    totals = dict.fromkeys(labels, 0)
    values: dict[str, list[int]] = {k: [0] for k in labels}
    conf_sum, conf_count = [0.0], [0]
    for counts, mean in minutes:
        n = 0
        for label, c in zip(labels, counts, strict=True):
            step = max(0, round(c * rng.uniform(0.75, 1.25)))
            totals[label] += step
            values[label].append(totals[label])
            n += step
        conf_count.append(conf_count[-1] + n)
        conf_sum.append(round(conf_sum[-1] + n * mean * rng.uniform(0.97, 1.03), 2))
    base = f'model_name="clazzify",model_version="{version}"'
    series = [
        {"series": f'clazzify_worker_predictions_total{{{base},label="{k}"}}',
         "values": " ".join(map(str, v))}
        for k, v in values.items()
    ]
    series += [
        {"series": f"clazzify_worker_confidence_sum{{{base}}}", "values": " ".join(map(str, conf_sum))},
        {"series": f"clazzify_worker_confidence_count{{{base}}}",
         "values": " ".join(map(str, conf_count))},
    ]
    return series


def _tests(rule_file: Path) -> dict:
    steady = [STEADY] * (STEADY_MIN + DRIFT_MIN)
    drifting = [STEADY] * STEADY_MIN + [DRIFT] * DRIFT_MIN
    series = _stream("1", steady, seed=1) + _stream("2", drifting, seed=2)
    firing = {"model_name": "clazzify", "model_version": "2", "severity": "warning", "team": "ml"}
    checks = []
    for at, version_2_fires in (("23h50m", False), ("24h10m", False), ("26h", True)):
        for alert in ALERTS:
            expected = [{"exp_labels": firing}] if version_2_fires else []
            checks.append({"eval_time": at, "alertname": alert, "exp_alerts": expected})
    return {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }


def _run_promtool(tmp_path: Path, groups: list[dict]) -> subprocess.CompletedProcess:
    """``promtool check rules`` on the rules as they are, then ``promtool test rules`` on them
    without annotations (promtool compares annotations verbatim, values included; the check
    has already parsed their templates)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    check = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups]
    rules.write_text(yaml.safe_dump({"groups": bare}, sort_keys=False))
    test = tmp_path / "test.yaml"
    test.write_text(yaml.safe_dump(_tests(rules), sort_keys=False, width=1 << 20))
    return subprocess.run([promtool(), "test", "rules", str(test)], capture_output=True,
                          text=True, timeout=300)


def _manifest_groups() -> list[dict]:
    doc = yaml.safe_load(MANIFEST.read_text())
    assert doc["kind"] == "PrometheusRule" and doc["apiVersion"] == "monitoring.coreos.com/v1"
    return doc["spec"]["groups"]


def test_the_manifest_is_what_drift_rules_generates() -> None:
    assert MANIFEST.read_text() == drift_rules.render(drift_rules.training_mix(COUNTS))
    assert "prometheus-rules.yaml" in (MANIFEST.parent / "kustomization.yaml").read_text()


@pytest.mark.slow
def test_the_alerts_fire_on_drift_and_stay_quiet_on_a_steady_stream(tmp_path: Path) -> None:
    out = _run_promtool(tmp_path, _manifest_groups())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.slow
def test_the_promtool_check_can_fail(tmp_path: Path) -> None:
    """A PSI threshold no drift reaches: the class-mix alert stays silent and the test fails."""
    mix = drift_rules.training_mix(COUNTS)
    groups = drift_rules.rule_groups(mix, drift_rules.DriftRuleConfig(psi_threshold=50.0))
    out = _run_promtool(tmp_path, groups)
    assert out.returncode != 0
    assert "ClazzifyClassMixDrift" in out.stdout + out.stderr
    assert "ClazzifyUnknownRateSpike" not in out.stdout + out.stderr


def test_drift_rules_command_reads_a_manifest_and_refuses_bad_counts(tmp_path: Path) -> None:
    from clazzify.cli import main

    manifest = tmp_path / "train.csv"
    manifest.write_text("uri,label\na.jpg,food\nb.jpg,food\nc.jpg,menu\nd.jpg,human\n")
    out = tmp_path / "rules.yaml"
    result = CliRunner().invoke(main, ["drift-rules", "--manifest", str(manifest), "-o", str(out)])
    assert result.exit_code == 0, result.output
    shares = {r["labels"]["label"]: r["expr"] for r in yaml.safe_load(out.read_text())["spec"]["groups"][0]["rules"]}
    assert shares == {"food": "vector(0.5)", "human": "vector(0.25)", "menu": "vector(0.25)"}
    with pytest.raises(DataError, match="food=x"):
        drift_rules.parse_class_counts("food=x")
    with pytest.raises(DataError, match="positive"):
        drift_rules.training_mix({"food": 0})
    both = CliRunner().invoke(main, ["drift-rules", "--manifest", str(manifest), "--class-counts", "a=1"])
    assert both.exit_code != 0 and "exactly one" in both.output
