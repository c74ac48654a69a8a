"""Judge a canary on evidence: each model version's own request count, 5xx rate and p99.

Pure functions. :func:`parse_metrics` reads one model server's ``/metrics`` text,
:func:`window` turns two scrapes of a version's pods (before and after the soak) into
:class:`VersionStats`, and :func:`judge_canary` decides. :mod:`clazzify.rollout.cluster`
does the scraping and acts on the verdict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from clazzify.core.errors import ConfigError

#: Routes that answer inferences (clazzify_requests / clazzify_request_seconds labels).
INFER_ROUTES = frozenset({"v1_predict", "v2_infer", "grpc_infer"})
#: gRPC codes that are the server's fault (UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE,
#: DATA_LOSS), the counterpart of HTTP 5xx.
GRPC_SERVER_ERRORS = frozenset({"2", "4", "13", "14", "15"})
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Scrape:
    """One server's inference counters at one moment.

    Attributes:
        requests: inference requests answered, all statuses.
        errors: of them, answered with a server error (HTTP 5xx, or a gRPC server code).
        buckets: cumulative latency histogram of inference requests: upper bound (s) -> count.
    """

    requests: float = 0.0
    errors: float = 0.0
    buckets: Mapping[float, float] = field(default_factory=dict)


def _is_server_error(route: str, status: str) -> bool:
    if route == "grpc_infer":
        return status in GRPC_SERVER_ERRORS
    return status.startswith("5")


def parse_metrics(text: str) -> Scrape:
    """The inference counters in a clazzify model server's Prometheus exposition ``text``."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m["labels"] or ""))
        if labels.get("route") not in INFER_ROUTES:
            continue
        value = float(m["value"])
        if m["name"] == "clazzify_requests_total":
            requests += value
            if _is_server_error(labels["route"], labels.get("status", "")):
                errors += value
        elif m["name"] == "clazzify_request_seconds_bucket":
            le = float(labels["le"])  # "+Inf" parses as inf
            buckets[le] = buckets.get(le, 0.0) + value
    return Scrape(requests, errors, buckets)


def _increase(before: float, after: float) -> float:
    # A counter below its earlier value means the pod restarted: count from zero.
    return after - before if after >= before else after


@dataclass(frozen=True)
class VersionStats:
    """What one model version served during the soak window.

    Attributes:
        version: the registry version.
        requests: inference requests answered in the window.
        errors: of them, server errors.
        p99_s: 99th-percentile latency in seconds (upper bound of its histogram bucket);
            None without requests.
    """

    version: str
    requests: float
    errors: float
    p99_s: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def window(version: str, before: Mapping[str, Scrape], after: Mapping[str, Scrape]) -> VersionStats:
    """A version's stats between two scrapes of its pods (pod name -> :class:`Scrape`).

    Pods that appeared during the window count from zero; pods that went away count nothing.
    """
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for pod, end in after.items():
        start = before.get(pod, Scrape())
        requests += _increase(start.requests, end.requests)
        errors += _increase(start.errors, end.errors)
        for le, count in end.buckets.items():
            buckets[le] = buckets.get(le, 0.0) + _increase(start.buckets.get(le, 0.0), count)
    return VersionStats(version, requests, errors, quantile(0.99, buckets))


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The upper bound of the first bucket holding the ``q`` quantile (None if empty).

    Coarser than Prometheus' interpolation, and never optimistic: the true value is at
    most this bound.
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    for le in bounds:
        if buckets[le] >= rank:
            return le
    return bounds[-1]


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary may take all traffic.

    Attributes:
        soak_s: seconds the canary serves its share before it is judged.
        min_requests: fewest canary inferences in the window to judge at all; fewer is
            no evidence, and the canary is rolled back.
        max_error_rate: highest canary server-error rate accepted outright.
        error_rate_margin: a canary above ``max_error_rate`` still passes if it is no more
            than this above the stable version's rate (the fault is not the model's).
        max_p99_ratio: highest canary p99 / stable p99.
        p99_floor_s: p99s below this never fail a canary (a 2 ms vs 5 ms histogram bucket
            is noise, not a regression).
    """

    soak_s: float = 300.0
    min_requests: int = 100
    max_error_rate: float = 0.01
    error_rate_margin: float = 0.005
    max_p99_ratio: float = 1.5
    p99_floor_s: float = 0.05

    def __post_init__(self) -> None:
        if self.soak_s < 0 or self.min_requests < 0:
            raise ConfigError(f"soak_s={self.soak_s} and min_requests={self.min_requests} "
                              "must be >= 0")
        if not 0 <= self.max_error_rate <= 1 or not 0 <= self.error_rate_margin <= 1:
            raise ConfigError(f"max_error_rate={self.max_error_rate} and error_rate_margin="
                              f"{self.error_rate_margin} are rates: use 0..1")
        if self.max_p99_ratio < 1:
            raise ConfigError(f"max_p99_ratio={self.max_p99_ratio} would fail a canary as "
                              "fast as the stable version: use >= 1")


@dataclass(frozen=True)
class CanaryVerdict:
    """``promote`` or not, and why (one sentence with the numbers)."""

    promote: bool
    reason: str


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def judge_canary(canary: VersionStats, stable: VersionStats | None,
                 policy: CanaryPolicy) -> CanaryVerdict:
    """Promote only if the canary served enough requests, its server-error rate and its p99
    hold against the policy and the stable version's own figures in the same window."""
    if canary.requests < policy.min_requests:
        return CanaryVerdict(False, (
            f"version {canary.version} answered {canary.requests:.0f} inferences in the soak "
            f"window, fewer than the {policy.min_requests} needed to judge it: send traffic "
            "or lower min_requests"))
    rate = canary.error_rate
    stable_rate = stable.error_rate if stable is not None and stable.requests else None
    if rate > policy.max_error_rate and (
        stable_rate is None or rate > stable_rate + policy.error_rate_margin
    ):
        against = "" if stable_rate is None else f" (stable {stable.version}: {stable_rate:.2%})"
        return CanaryVerdict(False, (
            f"version {canary.version} failed {rate:.2%} of {canary.requests:.0f} inferences "
            f"with server errors{against}, above the {policy.max_error_rate:.2%} allowed"))
    if (stable is not None and stable.p99_s is not None and canary.p99_s is not None
            and canary.p99_s > policy.p99_floor_s
            and canary.p99_s > policy.max_p99_ratio * stable.p99_s):
        return CanaryVerdict(False, (
            f"version {canary.version} p99 latency {_ms(canary.p99_s)} is "
            f"{canary.p99_s / stable.p99_s:.1f}x stable version {stable.version}'s "
            f"{_ms(stable.p99_s)}, above the {policy.max_p99_ratio:.1f}x allowed"))
    stable_text = ("no stable traffic to compare" if stable is None or not stable.requests
                   else f"stable {stable.version}: {stable.error_rate:.2%}, p99 "
                        f"{_ms(stable.p99_s)}")
    return CanaryVerdict(True, (
        f"version {canary.version} held over {canary.requests:.0f} inferences: server errors "
        f"{rate:.2%}, p99 {_ms(canary.p99_s)} ({stable_text})"))


