"""Prometheus metrics of the model server, served on ``/metrics`` with KServe's own."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
    """Requests by status, latency, batch sizes, predictions per class and the model version.

    Created once by the entry point (creating it registers the metrics).
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "clazzify_requests", "HTTP requests by route and status code",
            ["route", "status"], registry=registry,
        )
        self.latency = Histogram(
            "clazzify_request_seconds", "HTTP request latency by route",
            ["route"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "clazzify_batch_size", "Images per engine call",
            buckets=_BATCH_BUCKETS, registry=registry,
        )
        self.predictions = Counter(
            "clazzify_predictions", "Images answered, by top label", ["label"], registry=registry
        )
        self.model_info = Gauge(
            "clazzify_model_info", "1 for the model version being served",
            ["model_name", "version", "engine"], registry=registry,
        )
        self.swaps = Counter(
            "clazzify_model_swaps", "Hot swaps to a new model version", registry=registry
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def set_model(self, model_name: str, version: str, engine: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model_name, version, engine).set(1)
