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
