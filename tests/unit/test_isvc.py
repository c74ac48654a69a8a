"""clazzify.rollout.isvc: the InferenceService manifests for a champion: canary, promotion, rollback."""

from __future__ import annotations

import copy

import pytest

from clazzify.core.errors import ConfigError
from clazzify.rollout import isvc
from clazzify.rollout.isvc import KNATIVE, STANDARD, InferenceServiceConfig

pytestmark = pytest.mark.unit

IMAGE = "registry.example/clazzify-serving:1"
V1 = "s3://mlflow/1/models/m-aaa/artifacts"
V2 = "s3://mlflow/1/models/m-bbb/artifacts"


def cfg(mode: str = KNATIVE, **kw) -> InferenceServiceConfig:
    mode = kw.pop("deployment_mode", mode)
    metric = "concurrency" if isvc.LEGACY_MODES.get(mode, mode) == KNATIVE else "cpu"
    return InferenceServiceConfig(
        image=IMAGE, deployment_mode=mode, scale_metric=kw.pop("scale_metric", metric), **kw
    )


def live(mode: str, uri: str = V1, version: str = "1") -> dict:
    """An object as the API server returns it: status and server fields included."""
    obj = isvc.inference_service(cfg(mode), uri, version)
    obj["metadata"].update(resourceVersion="42", generation=3, uid="u-1", managedFields=[{}])
    obj["status"] = {"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]}
    return obj


def test_full_manifest_carries_the_storage_initializer_contract():
    svc = isvc.inference_service(cfg(), V1, "1")
    pred = svc["spec"]["predictor"]
    (container,) = pred["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert svc["apiVersion"] == "serving.kserve.io/v1beta1" and svc["kind"] == "InferenceService"
    assert svc["metadata"]["annotations"][isvc.MODE_ANNOTATION] == KNATIVE
    assert env["STORAGE_URI"]["value"] == V1
    args = container["args"]
    assert args[args.index("--model-uri") + 1] == "/mnt/models"
    assert env["CLAZZIFY_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "clazzify-api-keys",
        "key": "api-keys",
    }
    assert pred["serviceAccountName"] == "clazzify-storage"
    # Server-wide health: ready only with the model loaded, live while the process answers.
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pred["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert isvc.served_model(pred) == (V1, "1")
    assert "canaryTrafficPercent" not in pred


@pytest.mark.parametrize(
    ("mode", "percent", "current", "expect"),
    [
        # Knative: the predictor changes, KServe splits by revision.
        (KNATIVE, 10, V1, {"predictor": (V2, "2"), "canaryTrafficPercent": 10, "canary": None}),
        (KNATIVE, 0, V1, {"predictor": (V2, "2"), "canaryTrafficPercent": 0, "canary": None}),
        (KNATIVE, 100, V1, {"predictor": (V2, "2"), "canaryTrafficPercent": None, "canary": None}),
        # Nothing to compare with: the same model again -> straight rollout.
        (KNATIVE, 10, V2, {"predictor": (V2, "2"), "canaryTrafficPercent": None, "canary": None}),
        # Standard: stable predictor stays, the new one goes into spec.canary.
        (
            STANDARD,
            25,
            V1,
            {"predictor": (V1, "1"), "canaryTrafficPercent": None, "canary": ((V2, "2"), 25)},
        ),
        (STANDARD, 100, V1, {"predictor": (V2, "2"), "canaryTrafficPercent": None, "canary": None}),
        # Legacy names map onto the current modes.
        (
            "Serverless",
            10,
            V1,
            {"predictor": (V2, "2"), "canaryTrafficPercent": 10, "canary": None},
        ),
        (
            "RawDeployment",
            10,
            V1,
            {"predictor": (V1, "1"), "canaryTrafficPercent": None, "canary": ((V2, "2"), 10)},
        ),
    ],
)
def test_with_model_table(mode, percent, current, expect):
    before = live(mode, current, "1" if current == V1 else "2")
    snapshot = copy.deepcopy(before)
    out = isvc.with_model(before, V2, "2", percent)
    assert before == snapshot, "the input must not change"
    pred = out["spec"]["predictor"]
    assert isvc.served_model(pred) == expect["predictor"]
    assert pred.get("canaryTrafficPercent") == expect["canaryTrafficPercent"]
    if expect["canary"] is None:
        assert "canary" not in out["spec"]
    else:
        (entry,) = out["spec"]["canary"]
        assert isvc.served_model(entry["predictor"]) == expect["canary"][0]
        assert entry["trafficPercent"] == expect["canary"][1]
    assert "status" not in out and "managedFields" not in out["metadata"]
    assert out["metadata"]["resourceVersion"] == "42", "a replace needs the version it read"
    assert isvc.canary_in_flight(out) == (
        expect["canaryTrafficPercent"] is not None or expect["canary"] is not None
    )


def test_overlay_settings_survive_a_new_model():
    before = live(KNATIVE)
    pred = before["spec"]["predictor"]
    pred["nodeSelector"] = {"pool": "serving"}
    pred["containers"][0]["resources"]["limits"]["cpu"] = "4"
    pred["containers"][0]["env"].append({"name": "EXTRA", "value": "x"})
    out = isvc.with_model(before, V2, "2", 10)["spec"]["predictor"]
    assert out["nodeSelector"] == {"pool": "serving"}
    assert out["containers"][0]["resources"]["limits"]["cpu"] == "4"
    names = [e["name"] for e in out["containers"][0]["env"]]
    assert names.count("STORAGE_URI") == 1 and "EXTRA" in names and "CLAZZIFY_API_KEYS" in names


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
def test_promote_takes_the_canary_to_100(mode):
    canary = isvc.with_model(live(mode), V2, "2", 10)
    out = isvc.promote(canary)
    assert isvc.served_model(out["spec"]["predictor"]) == (V2, "2")
    assert not isvc.canary_in_flight(out)
    assert isvc.promote(out) == out, "promoting twice changes nothing"


@pytest.mark.parametrize("mode", [KNATIVE, STANDARD])
def test_abort_canary_sends_everything_back(mode):
    canary = isvc.with_model(live(mode), V2, "2", 10)
    out = isvc.abort_canary(canary)
    if mode == KNATIVE:
        assert out["spec"]["predictor"]["canaryTrafficPercent"] == 0
    else:
        assert "canary" not in out["spec"]
        assert isvc.served_model(out["spec"]["predictor"]) == (V1, "1")


@pytest.mark.parametrize(
    ("start", "mode"),
    [("promoted", KNATIVE), ("canary", KNATIVE), ("promoted", STANDARD), ("canary", STANDARD)],
)
def test_rollback_serves_previous_at_100(start, mode):
    state = isvc.with_model(live(mode), V2, "2", 10 if start == "canary" else 100)
    out = isvc.rollback(state, V1, "1")
    assert isvc.served_model(out["spec"]["predictor"]) == (V1, "1")
    assert not isvc.canary_in_flight(out)


@pytest.mark.parametrize(
    ("artifact_uri", "destination", "expected"),
    [
        (
            "mlflow-artifacts:/1/models/m-x/artifacts",
            "s3://mlflow",
            "s3://mlflow/1/models/m-x/artifacts",
        ),
        (
            "mlflow-artifacts:/1/models/m-x/artifacts",
            "s3://mlflow/root/",
            "s3://mlflow/root/1/models/m-x/artifacts",
        ),
        (
            "mlflow-artifacts://mlflow:5000/api/2.0/mlflow-artifacts/artifacts/1/m",
            "s3://b",
            "s3://b/api/2.0/mlflow-artifacts/artifacts/1/m",
        ),
        ("s3://bucket/models/7", "s3://mlflow", "s3://bucket/models/7"),
        (
            "/home/u/.clazzify/mlartifacts/1/m",
            "s3://mlflow",
            "file:///home/u/.clazzify/mlartifacts/1/m",
        ),
    ],
)
def test_storage_uri_for(artifact_uri, destination, expected):
    assert isvc.storage_uri_for(artifact_uri, destination) == expected


@pytest.mark.parametrize(
    ("artifact_uri", "destination", "message"),
    [
        ("mlflow-artifacts:/1/m", "", "artifacts_destination"),
        ("dbfs:/models/1", "s3://mlflow", "cannot read"),
    ],
)
def test_storage_uri_for_refuses(artifact_uri, destination, message):
    with pytest.raises(ConfigError, match=message):
        isvc.storage_uri_for(artifact_uri, destination)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deployment_mode": "Sidecar"}, "deployment mode 'Sidecar'"),
        ({"deployment_mode": STANDARD, "scale_metric": "concurrency"}, "use one of cpu, memory"),
        ({"deployment_mode": KNATIVE, "scale_metric": "cpu"}, "use one of concurrency, rps"),
        ({"deployment_mode": STANDARD, "min_replicas": 0}, "raises it to 1"),
        ({"min_replicas": 3, "max_replicas": 2}, "below min_replicas"),
        ({"name": "Clazzify_Model"}, "not a Kubernetes name"),
        ({"memory_limit": "2 GB"}, "not a Kubernetes quantity"),
        ({"scale_target": -1}, "must be > 0"),
    ],
)
def test_serving_config_rejects(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cfg(**kwargs)


@pytest.mark.parametrize(
    ("mode", "metric", "target"), [(KNATIVE, "concurrency", 16), (STANDARD, "cpu", 70)]
)
def test_scaling_defaults_follow_the_mode(mode, metric, target):
    c = InferenceServiceConfig(image=IMAGE, deployment_mode=mode)
    assert (c.scale_metric, c.scale_target) == (metric, target)


def test_scale_to_zero_is_knative_only():
    assert cfg(KNATIVE, min_replicas=0).min_replicas == 0


@pytest.mark.parametrize("percent", [-1, 101])
def test_canary_percent_range(percent):
    with pytest.raises(ConfigError, match="0..100"):
        isvc.with_model(live(KNATIVE), V2, "2", percent)


@pytest.mark.parametrize(
    ("status", "generation", "ready"),
    [
        ({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "True"}]}, 3, True),
        ({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]}, 3, False),
        ({"observedGeneration": 3, "conditions": [{"type": "Ready", "status": "False"}]}, 3, False),
        (
            {
                "observedGeneration": 3,
                "conditions": [{"type": "Ready", "status": "True"}],
                "components": {
                    "predictor": {"latestCreatedRevision": "r-2", "latestReadyRevision": "r-1"}
                },
            },
            3,
            False,
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [{"type": "Ready", "status": "True"}],
                "components": {
                    "predictor": {"latestCreatedRevision": "r-2", "latestReadyRevision": "r-2"}
                },
            },
            3,
            True,
        ),
        ({}, 3, False),
    ],
)
def test_is_ready(status, generation, ready):
    assert isvc.is_ready({"metadata": {"generation": generation}, "status": status}) is ready


def test_mode_comes_from_status_then_annotation():
    obj = live(KNATIVE)
    assert isvc.deployment_mode(obj) == KNATIVE
    obj["status"]["deploymentMode"] = "RawDeployment"
    assert isvc.deployment_mode(obj) == STANDARD
    del obj["status"]["deploymentMode"], obj["metadata"]["annotations"]
    assert isvc.deployment_mode(obj) == STANDARD, "KServe's default mode"


def test_batch_size_is_the_serving_benchmarks_best():
    """One source for serving sizes: the benchmark's file, the deploy step, the server."""
    import json
    from pathlib import Path

    from clazzify.serving.config import ServerConfig

    sizes = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results"
                        / "serving_sizes.json").read_text())
    best = sizes["best_batch_size"]
    assert isvc.InferenceServiceConfig(image="x").max_batch_size == best
    assert ServerConfig().max_batch_size == best
    args = isvc.inference_service(cfg(), V1, "1")["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--max-batch-size") + 1] == str(best)


@pytest.mark.parametrize(("mode", "names"), [(KNATIVE, ["http1"]), (STANDARD, ["http1", "grpc"])])
def test_ports_and_scraping_follow_kserve(mode, names):
    svc = isvc.inference_service(cfg(mode), V1, "1")
    pred = svc["spec"]["predictor"]
    (container,) = pred["containers"]
    assert [p["name"] for p in container["ports"]] == names
    assert svc["metadata"]["annotations"][isvc.SCRAPE_ANNOTATION] == "true"
    assert pred["annotations"][isvc.PROMETHEUS_PORT_ANNOTATION] == str(isvc.HTTP_PORT)
    args = container["args"]
    assert args[args.index("--model_name") + 1] == "clazzify"
    assert args[args.index("--grpc_port") + 1] == str(isvc.GRPC_PORT)
