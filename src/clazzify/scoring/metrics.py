"""Prometheus metrics and structured (JSON) logs of the scoring worker.

Metrics live in their own registry (nothing is registered at import); the worker
serves them on ``--metrics-port`` at ``/metrics``.

The drift watch (docs/monitoring.md, manifests/monitoring/prometheus-rules.yaml) reads two of them,
both labelled by ``model_name`` and ``model_version``:

- ``clazzify_worker_predictions_total{label}``: committed scores by predicted class, or
  ``unknown`` for a photo the model flagged as none of its classes. Every class of a model
  (and ``unknown``, for a model with an out-of-distribution score) gets its series at 0 as
  soon as the model is seen, so a class that stops appearing still counts in the class mix.
- ``clazzify_worker_confidence``: a histogram of the top class probability.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from clazzify.scoring.endpoint_client import UNKNOWN
from clazzify.scoring.scores import ScoreRow
from clazzify.scoring.worker import BatchStats, Outcome

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Top-probability buckets: fine near 1, where a healthy model's answers are.
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


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
        self.predictions = Counter(
            "clazzify_worker_predictions",
            "Committed scores by predicted class ('unknown': none of the classes).",
            ["model_name", "model_version", "label"],
            registry=r,
        )
        self.confidence = Histogram(
            "clazzify_worker_confidence",
            "Top class probability of committed scores.",
            ["model_name", "model_version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self._seen: set[tuple[str, str, bool]] = set()

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
        self.observe_scores(stats.committed)

    def observe_scores(self, committed: Sequence[ScoreRow]) -> None:
        """Count committed scores by class (or ``unknown``) and their top probability."""
        for score in committed:
            self._init_series(score)
            label = UNKNOWN if score.unknown else score.label
            self.predictions.labels(score.model_name, score.model_version, label).inc()
            self.confidence.labels(score.model_name, score.model_version).observe(
                score.probability
            )

    def _init_series(self, score: ScoreRow) -> None:
        key = (score.model_name, score.model_version, score.unknown is not None)
        if key in self._seen:
            return
        self._seen.add(key)
        names = list(score.probabilities) + ([UNKNOWN] if score.unknown is not None else [])
        for name in names:
            self.predictions.labels(score.model_name, score.model_version, name)

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
