"""The rollout sequence (create / canary -> wait -> promote) against an in-memory API
server that keeps resourceVersions and reports readiness like KServe does."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from clazzify.rollout import cluster as rollout
from clazzify.rollout import isvc
from clazzify.rollout.canary import CanaryPolicy, Scrape
from clazzify.rollout.cluster import CanaryRejected, Resolved, RolloutError
from clazzify.rollout.isvc import KNATIVE, STANDARD, InferenceServiceConfig

pytestmark = pytest.mark.unit

V1 = Resolved("1", "s3://mlflow/1/models/m-a/artifacts")
V2 = Resolved("2", "s3://mlflow/1/models/m-b/artifacts")


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeCustomObjects:
    """The three CustomObjectsApi calls the rollout makes; a generation becomes Ready
    ``ready_after`` reads after it was written (never, if None)."""

    def __init__(self, ready_after: int | None = 1) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.writes: list[dict] = []
        self.ready_after = ready_after
        self._reads_since_write = 0

    def _store(self, body: dict) -> dict:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        obj = copy.deepcopy(body)
        old = self.objects.get(key)
        obj["metadata"]["generation"] = (old["metadata"]["generation"] + 1) if old else 1
        obj["metadata"]["resourceVersion"] = str(len(self.writes) + 1)
        obj["status"] = {"observedGeneration": obj["metadata"]["generation"] - 1}
        self.objects[key] = obj
        self.writes.append(copy.deepcopy(body))
        self._reads_since_write = 0
        return copy.deepcopy(obj)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == ("serving.kserve.io", "v1beta1", "inferenceservices")
        obj = self.objects.get((namespace, name))
        if obj is None:
            raise ApiError(404)
        self._reads_since_write += 1
        if self.ready_after is not None and self._reads_since_write >= self.ready_after:
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        return copy.deepcopy(obj)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if (namespace, body["metadata"]["name"]) in self.objects:
            raise ApiError(409)
        return self._store(body)

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        current = self.objects[(namespace, name)]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiError(409)
        return self._store(body)


def cfg(mode: str = KNATIVE) -> InferenceServiceConfig:
    return InferenceServiceConfig(
        image="r/serving:1",
        deployment_mode=mode,
        scale_metric="concurrency" if mode == KNATIVE else "cpu",
    )


def no_sleep(_: float) -> None:
    pass


class FakeMetrics:
    """Each read of a version's pods shows ``per_read`` more inferences: (requests, errors,
    latency in s) per version; versions not listed serve well."""

    def __init__(self, **per_read: tuple[int, int, float]) -> None:
        self.per_read = per_read
        self.reads: dict[str, int] = {}

    def __call__(self, version: str) -> dict[str, Scrape]:
        n = self.reads[version] = self.reads.get(version, 0) + 1
        requests, errors, latency = self.per_read.get(f"v{version}", (200, 0, 0.02))
        total = n * requests
        buckets = {b: (total if latency <= b else 0) for b in (0.01, 0.05, 0.1, 0.5, 1.0)}
        buckets[float("inf")] = total
        return {f"pod-{version}": Scrape(total, n * errors, buckets)}


healthy = FakeMetrics()  # counters only grow, so one instance serves every test


def test_first_rollout_creates_at_100():
    api = FakeCustomObjects()
    result = rollout.roll_out(api, cfg(), V1, canary_percent=10, sleep=no_sleep, read_metrics=healthy)
    assert result.action == "created"
    (written,) = api.writes
    assert isvc.served_model(written["spec"]["predictor"]) == (V1.storage_uri, "1")
    assert not isvc.canary_in_flight(written)


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
def test_canary_then_promote(mode):
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(mode), V1, 10, sleep=no_sleep, read_metrics=healthy)
    result = rollout.roll_out(api, cfg(mode), V2, 10, sleep=no_sleep, read_metrics=healthy)
    assert result.action == "promoted"
    create, canary, promoted = api.writes
    assert isvc.canary_in_flight(canary)
    assert not isvc.canary_in_flight(promoted)
    assert isvc.served_model(promoted["spec"]["predictor"]) == (V2.storage_uri, "2")
    live = api.objects[("clazzify", "clazzify")]
    assert isvc.served_model(live["spec"]["predictor"]) == (V2.storage_uri, "2")


def test_percent_100_rolls_out_without_canary():
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(), V1, 10, sleep=no_sleep, read_metrics=healthy)
    result = rollout.roll_out(api, cfg(), V2, 100, sleep=no_sleep, read_metrics=healthy)
    assert result.action == "rolled-out" and len(api.writes) == 2


def test_canary_that_never_gets_ready_is_not_promoted():
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(), V1, 10, sleep=no_sleep, read_metrics=healthy)
    api.ready_after = None
    with pytest.raises(RolloutError, match="not ready after"):
        rollout.roll_out(api, cfg(), V2, 10, timeout_s=0, sleep=no_sleep, read_metrics=healthy)
    assert len(api.writes) == 2, "the canary stays at its share; nothing promoted it"
    assert isvc.canary_in_flight(api.objects[("clazzify", "clazzify")])


def test_forbidden_names_the_role():
    class Forbidden(FakeCustomObjects):
        def replace_namespaced_custom_object(self, *a, **k):
            raise ApiError(403)

    api = Forbidden()
    rollout.roll_out(api, cfg(), V1, 10, sleep=no_sleep, read_metrics=healthy)
    with pytest.raises(RolloutError, match="rbac.yaml"):
        rollout.roll_out(api, cfg(), V2, 10, sleep=no_sleep, read_metrics=healthy)


def test_write_manifest_is_applyable_yaml(tmp_path: Path):
    manifest = isvc.inference_service(cfg(), V1.storage_uri, "1")
    path = rollout.write_manifest(manifest, tmp_path / "out" / "isvc.yaml")
    assert yaml.safe_load(path.read_text()) == manifest


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
def test_roll_back_serves_previous_at_100(mode):
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(mode), V1, 10, sleep=no_sleep, read_metrics=healthy)
    rollout.roll_out(api, cfg(mode), V2, 10, sleep=no_sleep, read_metrics=healthy)
    result = rollout.roll_back(api, "clazzify", "clazzify", V1, sleep=no_sleep)
    live = api.objects[("clazzify", "clazzify")]
    assert result.action == "rolled-back"
    assert isvc.served_model(live["spec"]["predictor"]) == (V1.storage_uri, "1")
    assert not isvc.canary_in_flight(live)


def test_roll_back_needs_an_inference_service():
    with pytest.raises(RolloutError, match="no InferenceService"):
        rollout.roll_back(FakeCustomObjects(), "clazzify", "clazzify", V1, sleep=no_sleep)


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
@pytest.mark.parametrize(("metrics", "words"), [
    ({"v2": (200, 20, 0.02)}, "10.00% of 200"),
    ({"v2": (200, 0, 0.5)}, "p99 latency 500 ms"),
    ({"v2": (5, 0, 0.02)}, "fewer than the 100"),
])
def test_a_canary_whose_metrics_do_not_hold_is_rolled_back(mode, metrics, words):
    metrics = FakeMetrics(**metrics)
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(mode), V1, 10, sleep=no_sleep, read_metrics=healthy)
    soaked = []
    with pytest.raises(CanaryRejected, match=words) as caught:
        rollout.roll_out(api, cfg(mode), V2, 10, read_metrics=metrics,
                         policy=CanaryPolicy(soak_s=120), sleep=soaked.append)
    assert "version 1 serves all traffic" in str(caught.value)
    assert 120 in soaked and metrics.reads == {"2": 2, "1": 2}
    live = api.objects[("clazzify", "clazzify")]
    assert not isvc.canary_in_flight(live)
    assert isvc.served_model(live["spec"]["predictor"]) == (V1.storage_uri, "1")
    assert len(api.writes) == 3  # create, canary, back to stable: never promoted


def test_a_promotion_carries_the_verdict():
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(), V1, 10, sleep=no_sleep, read_metrics=healthy)
    result = rollout.roll_out(api, cfg(), V2, 10, sleep=no_sleep, read_metrics=FakeMetrics())
    assert result.action == "promoted" and "held over 200 inferences" in result.reason


def test_the_local_plan_names_every_step():
    steps = rollout.rollout_plan(cfg(), V2, 10, CanaryPolicy(soak_s=300, min_requests=50))
    text = "\n".join(steps)
    for words in ("canary taking 10%", "soak 300s", ">= 50 inferences", "promote", "fail the run"):
        assert words in text
    assert len(rollout.rollout_plan(cfg(), V2, 100, CanaryPolicy())) == 3
