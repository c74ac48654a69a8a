"""The rollout sequence (create / canary -> wait -> promote) against an in-memory API
server that keeps resourceVersions and reports readiness like KServe does."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from clazzify.rollout import cluster as rollout
from clazzify.rollout import deploy
from clazzify.rollout.cluster import Resolved, RolloutError
from clazzify.rollout.deploy import KNATIVE, STANDARD, InferenceServiceConfig

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


def test_first_rollout_creates_at_100():
    api = FakeCustomObjects()
    result = rollout.roll_out(api, cfg(), V1, canary_percent=10, sleep=no_sleep)
    assert result.action == "created"
    (written,) = api.writes
    assert deploy.served_model(written["spec"]["predictor"]) == (V1.storage_uri, "1")
    assert not deploy.canary_in_flight(written)


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
def test_canary_then_promote(mode):
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(mode), V1, 10, sleep=no_sleep)
    result = rollout.roll_out(api, cfg(mode), V2, 10, sleep=no_sleep)
    assert result.action == "promoted"
    create, canary, promoted = api.writes
    assert deploy.canary_in_flight(canary)
    assert not deploy.canary_in_flight(promoted)
    assert deploy.served_model(promoted["spec"]["predictor"]) == (V2.storage_uri, "2")
    live = api.objects[("clazzify", "clazzify")]
    assert deploy.served_model(live["spec"]["predictor"]) == (V2.storage_uri, "2")


def test_percent_100_rolls_out_without_canary():
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(), V1, 10, sleep=no_sleep)
    result = rollout.roll_out(api, cfg(), V2, 100, sleep=no_sleep)
    assert result.action == "rolled-out" and len(api.writes) == 2


def test_canary_that_never_gets_ready_is_not_promoted():
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(), V1, 10, sleep=no_sleep)
    api.ready_after = None
    with pytest.raises(RolloutError, match="not ready after"):
        rollout.roll_out(api, cfg(), V2, 10, timeout_s=0, sleep=no_sleep)
    assert len(api.writes) == 2, "the canary stays at its share; nothing promoted it"
    assert deploy.canary_in_flight(api.objects[("clazzify", "clazzify")])


def test_forbidden_names_the_role():
    class Forbidden(FakeCustomObjects):
        def replace_namespaced_custom_object(self, *a, **k):
            raise ApiError(403)

    api = Forbidden()
    rollout.roll_out(api, cfg(), V1, 10, sleep=no_sleep)
    with pytest.raises(RolloutError, match="rbac.yaml"):
        rollout.roll_out(api, cfg(), V2, 10, sleep=no_sleep)


def test_write_manifest_is_applyable_yaml(tmp_path: Path):
    manifest = deploy.inference_service(cfg(), V1.storage_uri, "1")
    path = rollout.write_manifest(manifest, tmp_path / "out" / "isvc.yaml")
    assert yaml.safe_load(path.read_text()) == manifest


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
def test_roll_back_serves_previous_at_100(mode):
    api = FakeCustomObjects()
    rollout.roll_out(api, cfg(mode), V1, 10, sleep=no_sleep)
    rollout.roll_out(api, cfg(mode), V2, 10, sleep=no_sleep)
    result = rollout.roll_back(api, "clazzify", "clazzify", V1, sleep=no_sleep)
    live = api.objects[("clazzify", "clazzify")]
    assert result.action == "rolled-back"
    assert deploy.served_model(live["spec"]["predictor"]) == (V1.storage_uri, "1")
    assert not deploy.canary_in_flight(live)


def test_roll_back_needs_an_inference_service():
    with pytest.raises(RolloutError, match="no InferenceService"):
        rollout.roll_back(FakeCustomObjects(), "clazzify", "clazzify", V1, sleep=no_sleep)
