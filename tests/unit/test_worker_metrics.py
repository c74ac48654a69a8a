"""Worker metrics and JSON logs."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import generate_latest

from clazzify.scoring.metrics import JsonFormatter, WorkerMetrics
from clazzify.scoring.worker import BatchStats, Outcome

pytestmark = pytest.mark.unit


def test_observe_counts_outcomes_by_reason_and_version() -> None:
    metrics = WorkerMetrics()
    stats = BatchStats(messages=4, scored=2, model_versions={"7": 2}, infer_s=0.2)
    outcomes = [
        Outcome("scored", scored=1),
        Outcome("scored", scored=1),
        Outcome("dead", "bad_json"),
        Outcome("retry", "db_unavailable"),
    ]
    metrics.observe(stats, outcomes, 0.3)
    text = generate_latest(metrics.registry).decode()
    assert "clazzify_worker_messages_consumed_total 4.0" in text
    assert 'clazzify_worker_images_scored_total{model_version="7"} 2.0' in text
    assert 'clazzify_worker_messages_dead_lettered_total{reason="bad_json"} 1.0' in text
    assert 'clazzify_worker_messages_retried_total{reason="db_unavailable"} 1.0' in text
    assert "clazzify_worker_batch_seconds_count 1.0" in text


def test_json_log_lines_carry_the_extra_fields() -> None:
    record = logging.LogRecord(
        "clazzify.scoring.consumer", logging.INFO, __file__, 1, "batch: %d", (3,), None
    )
    record.scored = 3
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "batch: 3" and doc["scored"] == 3 and doc["level"] == "info"


def _samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_drift_metrics_count_classes_unknowns_and_confidence(tmp_path) -> None:
    """A real batch through process_batch: flagged photos count as 'unknown', per version."""
    from _scoring import CLASSES, FakeScorer, png_bytes

    from clazzify.scoring.scores import ScoreRepository
    from clazzify.scoring.worker import Message, process_batch

    photos = {"grey": (128, 128, 128), "red": (220, 20, 20), "blue": (10, 30, 230)}
    for name, colour in photos.items():
        (tmp_path / f"{name}.png").write_bytes(png_bytes(colour))
    messages = [Message(json.dumps({"image_id": n, "uri": str(tmp_path / f"{n}.png")}).encode())
                for n in photos] + [Message(b"{not json")]
    repo = ScoreRepository.open(f"sqlite:///{tmp_path}/s.db")
    metrics = WorkerMetrics()
    stats = BatchStats()
    outcomes = process_batch(messages, FakeScorer(version="4", ood=True), repo, stats=stats)
    metrics.observe(stats, outcomes, 0.2)
    got = _samples(metrics)

    def count(label: str) -> float:
        key = (("label", label), ("model_name", "clazzify"), ("model_version", "4"))
        return got[("clazzify_worker_predictions_total", key)]

    flagged = {r["image_id"] for r in repo.unknown_images(model_name="clazzify")}
    assert "grey" in flagged
    assert count("unknown") == len(flagged)
    assert sum(count(c) for c in CLASSES) == 3 - len(flagged)
    assert all(count(c) >= 0 for c in CLASSES)  # every class has a series, zeros included
    version = (("model_name", "clazzify"), ("model_version", "4"))
    assert got[("clazzify_worker_confidence_count", version)] == 3
    assert 0.25 * 3 <= got[("clazzify_worker_confidence_sum", version)] <= 3


def test_an_older_model_gets_no_unknown_series(tmp_path) -> None:
    from clazzify.scoring.scores import ScoreRow

    metrics = WorkerMetrics()
    metrics.observe_scores([ScoreRow("a", "clazzify", "2", {"food": 0.9, "menu": 0.1}, "s3://b/a")])
    labels = {dict(k[1]).get("label") for k in _samples(metrics) if k[0] == "clazzify_worker_predictions_total"}
    assert labels == {"food", "menu"}
