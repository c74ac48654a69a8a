"""Prometheus metrics and structured (JSON) logs of the scoring worker.

Metrics live in their own registry (nothing is registered at import); the worker
serves them on ``--metrics-port`` at ``/metrics``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from clazzify.scoring.worker import BatchStats, Outcome

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    """Counters and latency histograms of one worker process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "clazzify_worker_messages_consumed",
            "Queue messages handled (every attempt).",
            registry=r,
        )
        self.scored = Counter(
            "clazzify_worker_images_scored",
            "Images whose scores were committed.",
            ["model_version"],
            registry=r,
        )
        self.retried = Counter(
            "clazzify_worker_messages_retried",
            "Messages kept unacknowledged after a transient failure.",
            ["reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "clazzify_worker_messages_dead_lettered",
            "Messages sent to the dead-letter queue.",
            ["reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "clazzify_worker_batch_seconds",
            "Wall time of one batch, fetch to commit.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "clazzify_worker_stage_seconds",
            "Time per batch in each stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe(self, stats: BatchStats, outcomes: Sequence[Outcome], seconds: float) -> None:
        self.consumed.inc(stats.messages)
        for version, n in stats.model_versions.items():
            self.scored.labels(model_version=version).inc(n)
        for o in outcomes:
            if o.status == "retry":
                self.retried.labels(reason=o.reason).inc()
            elif o.status == "dead":
                self.dead_lettered.labels(reason=o.reason).inc()
        self.batch_seconds.observe(seconds)
        self.stage_seconds.labels(stage="fetch").observe(stats.fetch_s)
        self.stage_seconds.labels(stage="infer").observe(stats.infer_s)
        self.stage_seconds.labels(stage="save").observe(stats.save_s)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)


_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def use_json_logs() -> None:
    """Switch every handler of the root logger to :class:`JsonFormatter`."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
