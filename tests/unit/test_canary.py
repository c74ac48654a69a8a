"""The canary decision (a pure function, table-tested), the metrics it reads, and the
rollout acting on it: promote on good evidence, roll back and fail with the reason."""

from __future__ import annotations

import pytest

from clazzify.core.errors import ConfigError
from clazzify.rollout.canary import (
    CanaryPolicy,
    Scrape,
    VersionStats,
    judge_canary,
    parse_metrics,
    quantile,
    window,
)

pytestmark = pytest.mark.unit

POLICY = CanaryPolicy(soak_s=60, min_requests=100, max_error_rate=0.01, error_rate_margin=0.005,
                      max_p99_ratio=1.5, p99_floor_s=0.05)


def stats(version, requests, errors, p99_ms):
    return VersionStats(version, requests, errors, None if p99_ms is None else p99_ms / 1000)


@pytest.mark.parametrize(("canary", "stable", "promote", "words"), [
    # healthy canary, healthy stable
    (stats("2", 500, 0, 100), stats("1", 4500, 2, 100), True, "held over 500"),
    # too little traffic to judge
    (stats("2", 99, 0, 100), stats("1", 900, 0, 100), False, "fewer than the 100"),
    # error rate above the cap and above stable + margin
    (stats("2", 500, 10, 100), stats("1", 4500, 9, 100), False, "2.00% of 500"),
    # error rate above the cap but the stable version fails as often: not the model
    (stats("2", 500, 10, 100), stats("1", 4500, 80, 100), True, "held"),
    # no stable traffic: the cap alone decides
    (stats("2", 500, 10, 100), None, False, "above the 1.00% allowed"),
    (stats("2", 500, 4, 100), None, True, "no stable traffic"),
    # p99 regression beyond 1.5x
    (stats("2", 500, 0, 250), stats("1", 4500, 0, 100), False, "2.5x stable version 1"),
    # exactly at 1.5x holds
    (stats("2", 500, 0, 150), stats("1", 4500, 0, 100), True, "held"),
    # tiny latencies never fail (histogram-bucket noise)
    (stats("2", 500, 0, 50), stats("1", 4500, 0, 10), True, "held"),
    # stable without latency data: only errors decide
    (stats("2", 500, 0, 900), stats("1", 0, 0, None), True, "no stable traffic"),
])
def test_judge_canary(canary, stable, promote, words):
    verdict = judge_canary(canary, stable, POLICY)
    assert verdict.promote is promote
    assert words in verdict.reason


@pytest.mark.parametrize("kwargs", [{"max_error_rate": 2}, {"max_p99_ratio": 0.5},
                                    {"soak_s": -1}])
def test_policy_rejects(kwargs):
    with pytest.raises(ConfigError):
        CanaryPolicy(**kwargs)


METRICS = """\
# HELP clazzify_requests_total HTTP requests by route and status code
# TYPE clazzify_requests_total counter
clazzify_requests_total{route="v1_predict",status="200"} 90.0
clazzify_requests_total{route="v1_predict",status="503"} 4.0
clazzify_requests_total{route="v1_predict",status="400"} 6.0
clazzify_requests_total{route="grpc_infer",status="0"} 10.0
clazzify_requests_total{route="grpc_infer",status="13"} 1.0
clazzify_requests_total{route="health",status="200"} 500.0
clazzify_requests_created{route="v1_predict",status="200"} 1.7e9
clazzify_request_seconds_bucket{le="0.01",route="v1_predict"} 50.0
clazzify_request_seconds_bucket{le="0.1",route="v1_predict"} 99.0
clazzify_request_seconds_bucket{le="+Inf",route="v1_predict"} 100.0
clazzify_request_seconds_bucket{le="0.01",route="grpc_infer"} 11.0
clazzify_request_seconds_bucket{le="0.1",route="grpc_infer"} 11.0
clazzify_request_seconds_bucket{le="+Inf",route="grpc_infer"} 11.0
clazzify_request_seconds_bucket{le="0.01",route="health"} 500.0
"""


def test_parse_metrics_counts_inferences_and_server_errors_only():
    scrape = parse_metrics(METRICS)
    assert scrape.requests == 111 and scrape.errors == 5  # 503 and gRPC INTERNAL, not the 400
    assert scrape.buckets == {0.01: 61.0, 0.1: 110.0, float("inf"): 111.0}


def test_window_takes_increases_and_survives_restarts_and_new_pods():
    before = {"a": Scrape(100, 1, {0.1: 90, float("inf"): 100}),
              "gone": Scrape(50, 0, {0.1: 50, float("inf"): 50})}
    after = {"a": Scrape(300, 3, {0.1: 280, float("inf"): 300}),   # +200, 2 errors
             "b": Scrape(20, 0, {0.1: 20, float("inf"): 20})}       # new pod: +20
    s = window("2", before, after)
    assert (s.requests, s.errors) == (220, 2)
    restarted = window("2", {"a": Scrape(100, 5, {})}, {"a": Scrape(30, 1, {})})
    assert (restarted.requests, restarted.errors) == (30, 1)


def test_quantile_is_the_bucket_bound():
    assert quantile(0.99, {0.01: 50, 0.1: 99, float("inf"): 100}) == 0.1
    assert quantile(0.99, {0.01: 50, 0.1: 98, float("inf"): 100}) == float("inf")
    assert quantile(0.99, {}) is None
