"""InferenceService specs: the KServe InferenceService that serves a champion, as plain dicts.

Pure functions, no cluster and no MLflow: build the InferenceService for a model
version, put a new version in as a canary, promote it to 100 %, roll back to the
version behind the ``previous`` alias. :mod:`clazzify.rollout.cluster` applies the result
through the Kubernetes API (or writes it, in a local run).

KServe facts these functions follow (v0.20 source and CRD):

- The predictor is a custom container (the serving image). KServe's storage
  initializer downloads the model to ``/mnt/models`` when that container carries a
  ``STORAGE_URI`` environment variable.
- ``Knative`` mode: Knative revisions; ``predictor.canaryTrafficPercent`` sends that
  share to the newest revision and the rest to the last one rolled out at 100 %;
  scaling on ``concurrency`` or ``rps``; ``minReplicas: 0`` scales to zero.
- ``Standard`` mode (raw Deployment + HPA, the default mode since the rename from
  ``RawDeployment``): ``canaryTrafficPercent`` is not honoured, a canary is the
  ``spec.canary`` list (``trafficPercent`` + a predictor); scaling on ``cpu`` or
  ``memory``; ``minReplicas: 0`` is raised to 1.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from clazzify.core.errors import ConfigError

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"

KNATIVE = "Knative"
STANDARD = "Standard"
LEGACY_MODES = {"Serverless": KNATIVE, "RawDeployment": STANDARD}
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
VERSION_ANNOTATION = "clazzify.io/model-version"
CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
MODEL_DIR = "/mnt/models"
HTTP_PORT = 8080
GRPC_PORT = 8081
#: KServe's scraping switch (InferenceService metadata) and where the predictor's metrics
#: are (predictor annotations); KServe copies them onto the pods as prometheus.io/*.
SCRAPE_ANNOTATION = "serving.kserve.io/enable-prometheus-scraping"
PROMETHEUS_PORT_ANNOTATION = "prometheus.kserve.io/port"
PROMETHEUS_PATH_ANNOTATION = "prometheus.kserve.io/path"
#: The serving benchmark's measured best engine batch size
#: (benchmarks/results/serving_sizes.json, written by benchmarks/model_server.py; a test
#: holds this default equal to it).
BENCHMARKED_BATCH_SIZE = 4

SCALE_METRICS = {KNATIVE: ("concurrency", "rps"), STANDARD: ("cpu", "memory")}
# Knative: in-flight requests per replica (the server batches up to 32 of them);
# Standard: HPA target CPU utilisation in percent.
DEFAULT_SCALING = {KNATIVE: ("concurrency", 16), STANDARD: ("cpu", 70)}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


def normalize_mode(mode: str) -> str:
    """``Knative`` or ``Standard`` (the legacy names ``Serverless``/``RawDeployment`` map over).

    Raises:
        ConfigError: any other value.
    """
    mode = LEGACY_MODES.get(mode, mode)
    if mode not in SCALE_METRICS:
        raise ConfigError(
            f"deployment mode {mode!r} is not one KServe serves predictors in: use "
            f"{KNATIVE!r} (Knative, canary by revision) or {STANDARD!r} (Deployment + HPA)"
        )
    return mode


@dataclass(frozen=True)
class InferenceServiceConfig:
    """How the champion is served: everything in the InferenceService but the model.

    Attributes:
        image: the serving image (``components/images.py`` SERVING_IMAGE).
        name: InferenceService name (a DNS label).
        namespace: namespace it lives in.
        model_name: model name in the URLs (``/v2/models/<model_name>/infer``).
        deployment_mode: ``Knative`` or ``Standard``.
        service_account: carries the MinIO secret for the storage initializer.
        api_keys_secret: Secret holding the API keys (``CLAZZIFY_API_KEYS``).
        api_keys_key: key in that Secret.
        min_replicas: lowest replica count (0 scales to zero in Knative mode only).
        max_replicas: highest replica count.
        scale_metric: ``concurrency``/``rps`` (Knative) or ``cpu``/``memory`` (Standard);
            empty: the mode's default (``concurrency`` or ``cpu``).
        scale_target: in-flight requests or rps per replica, or utilisation percent;
            0: the mode's default (16 in-flight requests, or 70 % CPU).
        cpu_request: container CPU request.
        cpu_limit: container CPU limit.
        memory_request: container memory request.
        memory_limit: container memory limit.
        max_batch_size: the server's adaptive batch size.
        max_latency_ms: how long the server waits to fill a batch.
    """

    image: str
    name: str = "clazzify"
    namespace: str = "clazzify"
    model_name: str = "clazzify"
    deployment_mode: str = KNATIVE
    service_account: str = "clazzify-storage"
    api_keys_secret: str = "clazzify-api-keys"
    api_keys_key: str = "api-keys"
    min_replicas: int = 1
    max_replicas: int = 4
    scale_metric: str = ""
    scale_target: int = 0
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "1Gi"
    memory_limit: str = "2Gi"
    max_batch_size: int = BENCHMARKED_BATCH_SIZE
    max_latency_ms: int = 5

    def __post_init__(self) -> None:
        mode = normalize_mode(self.deployment_mode)
        object.__setattr__(self, "deployment_mode", mode)
        default_metric, default_target = DEFAULT_SCALING[mode]
        if not self.scale_metric:
            object.__setattr__(self, "scale_metric", default_metric)
        if self.scale_target == 0:
            object.__setattr__(self, "scale_target", default_target)
        for field in ("name", "namespace", "service_account", "api_keys_secret"):
            value = getattr(self, field)
            if not _DNS_LABEL.match(value) or len(value) > 63:
                raise ConfigError(
                    f"{field}={value!r} is not a Kubernetes name: lower-case letters, digits "
                    "and '-', starting and ending alphanumeric, at most 63 characters"
                )
        if not self.image or " " in self.image:
            raise ConfigError(f"image={self.image!r} is not an image reference")
        if self.min_replicas < 0:
            raise ConfigError(f"min_replicas={self.min_replicas} must be >= 0")
        if self.deployment_mode == STANDARD and self.min_replicas == 0:
            raise ConfigError(
                "min_replicas=0 in Standard mode: KServe raises it to 1 (an HPA cannot scale "
                "to zero); set min_replicas=1 or use deployment_mode='Knative'"
            )
        if self.max_replicas < max(self.min_replicas, 1):
            raise ConfigError(
                f"max_replicas={self.max_replicas} is below min_replicas={self.min_replicas} "
                "(or below 1): raise max_replicas"
            )
        allowed = SCALE_METRICS[self.deployment_mode]
        if self.scale_metric not in allowed:
            raise ConfigError(
                f"scale_metric={self.scale_metric!r} does not work in {self.deployment_mode} "
                f"mode: use one of {', '.join(allowed)}"
            )
        if self.scale_target < 0:
            raise ConfigError(f"scale_target={self.scale_target} must be > 0")
        for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            if not _QUANTITY.match(getattr(self, field)):
                raise ConfigError(f"{field}={getattr(self, field)!r} is not a Kubernetes quantity")
        if self.max_batch_size < 1 or self.max_latency_ms < 0:
            raise ConfigError(
                f"max_batch_size={self.max_batch_size} must be >= 1 and "
                f"max_latency_ms={self.max_latency_ms} >= 0"
            )


def check_canary_percent(percent: int) -> int:
    """``percent`` if it is a traffic share in [0, 100].

    Raises:
        ConfigError: outside [0, 100].
    """
    if not 0 <= percent <= 100:
        raise ConfigError(
            f"canary_traffic_percent={percent} is not a share of traffic: use 0..100 "
            "(100 rolls out at once)"
        )
    return percent


def storage_uri_for(artifact_uri: str, artifacts_destination: str) -> str:
    """Where the storage initializer can fetch a registered model's artifacts.

    An MLflow server started with ``--serve-artifacts --artifacts-destination
    s3://bucket[/prefix]`` hands out ``mlflow-artifacts:/<path>`` locations; the
    same object lives at ``s3://bucket[/prefix]/<path>``. ``s3://`` locations pass
    through; a local path becomes a ``file://`` URI (a local run's manifest only).

    Raises:
        ConfigError: ``mlflow-artifacts:`` without an ``s3://`` destination, or a
            scheme the storage initializer cannot read.
    """
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "mlflow-artifacts":
        if not artifacts_destination.startswith("s3://"):
            raise ConfigError(
                f"{artifact_uri!r} is proxied by the MLflow server; set artifacts_destination to "
                "the server's --artifacts-destination (e.g. s3://mlflow) so KServe can read it"
            )
        return f"{artifacts_destination.rstrip('/')}/{parsed.path.lstrip('/')}"
    if parsed.scheme in ("s3", "gs", "hdfs", "https", "http", "pvc"):
        return artifact_uri
    if parsed.scheme == "file":
        return artifact_uri
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return f"file://{artifact_uri}"
    raise ConfigError(
        f"artifact location {artifact_uri!r} has a scheme KServe's storage initializer cannot "
        "read: log models to an MLflow server whose artifacts live on S3/MinIO"
    )


#: Every container's hardening: no root, no privilege escalation, no capabilities, the
#: runtime's default seccomp filter, a read-only root filesystem.
CONTAINER_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def predictor(cfg: InferenceServiceConfig, storage_uri: str, model_version: str) -> dict[str, Any]:
    """The predictor spec: the serving container fed through the storage initializer."""
    container = {
        "name": CONTAINER,
        "image": cfg.image,
        "command": ["python", "-m", "clazzify.serving"],
        # KServe's ModelServer spelling where it has one (a ServingRuntime's args template
        # works unchanged), clazzify's own options after.
        "args": [
            "--model_name",
            cfg.model_name,
            "--http_port",
            str(HTTP_PORT),
            "--grpc_port",
            str(GRPC_PORT),
            "--model-uri",
            MODEL_DIR,
            "--max-batch-size",
            str(cfg.max_batch_size),
            "--max-latency-ms",
            str(cfg.max_latency_ms),
        ],
        "env": [
            {"name": STORAGE_URI_ENV, "value": storage_uri},
            {"name": "CLAZZIFY_MODEL_VERSION", "value": str(model_version)},
            {
                "name": "CLAZZIFY_API_KEYS",
                "valueFrom": {
                    "secretKeyRef": {"name": cfg.api_keys_secret, "key": cfg.api_keys_key}
                },
            },
        ],
        "ports": ports(cfg.deployment_mode),
        # Ready only while a model is loaded (the server's health answers false once it is
        # gone, so the pod leaves the Service); alive while the process answers at all, so a
        # hung server is restarted.
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": HTTP_PORT},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": {
            "requests": {"cpu": cfg.cpu_request, "memory": cfg.memory_request},
            "limits": {"cpu": cfg.cpu_limit, "memory": cfg.memory_limit},
        },
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        # The root filesystem is read-only: scratch space (and $HOME for library caches)
        # is an emptyDir on /tmp.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    container["env"].append({"name": "HOME", "value": "/tmp"})
    return {
        "serviceAccountName": cfg.service_account,
        # The server never calls the Kubernetes API; no token in the pod.
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        "minReplicas": cfg.min_replicas,
        "maxReplicas": cfg.max_replicas,
        "scaleMetric": cfg.scale_metric,
        "scaleTarget": cfg.scale_target,
        "annotations": {
            VERSION_ANNOTATION: str(model_version),
            PROMETHEUS_PORT_ANNOTATION: str(HTTP_PORT),
            PROMETHEUS_PATH_ANNOTATION: "/metrics",
        },
        "containers": [container],
    }


def ports(mode: str) -> list[dict[str, Any]]:
    """The container's ports: HTTP, and in Standard mode V2 gRPC as well.

    Knative routes exactly one port per container, so in Knative mode the gRPC listener
    (always on 8081 inside the pod) is not declared; Standard mode's Service exposes both.
    """
    out = [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    if mode == STANDARD:
        out.append({"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"})
    return out


def inference_service(cfg: InferenceServiceConfig, storage_uri: str, model_version: str) -> dict[str, Any]:
    """The whole InferenceService serving ``model_version`` at 100 %."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": cfg.name,
            "namespace": cfg.namespace,
            "labels": {
                "app.kubernetes.io/name": "clazzify",
                "app.kubernetes.io/component": "serving",
            },
            "annotations": {MODE_ANNOTATION: cfg.deployment_mode, SCRAPE_ANNOTATION: "true"},
        },
        "spec": {"predictor": predictor(cfg, storage_uri, model_version)},
    }


def deployment_mode(isvc: Mapping[str, Any]) -> str:
    """The mode the object runs in: what KServe recorded in status, else the annotation,
    else KServe's default (``Standard``)."""
    recorded = (isvc.get("status") or {}).get("deploymentMode")
    annotated = ((isvc.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION)
    return normalize_mode(recorded or annotated or STANDARD)


def _container(pred: Mapping[str, Any]) -> dict[str, Any]:
    containers = pred.get("containers") or []
    for c in containers:
        if c.get("name") == CONTAINER:
            return c
    if len(containers) == 1:
        return containers[0]
    raise ConfigError(
        f"the predictor has no container named {CONTAINER!r}: clazzify serves a custom "
        "container predictor (see manifests/base/inferenceservice.yaml)"
    )


def served_model(pred: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(storage_uri, model_version)`` a predictor spec serves (None where unset)."""
    env = {e.get("name"): e.get("value") for e in _container(pred).get("env") or []}
    version = (pred.get("annotations") or {}).get(VERSION_ANNOTATION) or env.get(
        "CLAZZIFY_MODEL_VERSION"
    )
    return env.get(STORAGE_URI_ENV), version


def _with_model(pred: Mapping[str, Any], storage_uri: str, model_version: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(pred))
    out.pop("canaryTrafficPercent", None)
    container = _container(out)
    env = [
        e
        for e in container.get("env") or []
        if e.get("name") not in (STORAGE_URI_ENV, "CLAZZIFY_MODEL_VERSION")
    ]
    container["env"] = [
        {"name": STORAGE_URI_ENV, "value": storage_uri},
        {"name": "CLAZZIFY_MODEL_VERSION", "value": str(model_version)},
        *env,
    ]
    out["annotations"] = {**(out.get("annotations") or {}), VERSION_ANNOTATION: str(model_version)}
    return out


def _clean(isvc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without status and server-managed metadata (what a replace sends back is
    the live object, resourceVersion included, so keep that one)."""
    out = copy.deepcopy(dict(isvc))
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for key in ("managedFields", "creationTimestamp", "generation", "uid"):
        meta.pop(key, None)
    return out


def with_model(
    isvc: Mapping[str, Any], storage_uri: str, model_version: str, canary_percent: int
) -> dict[str, Any]:
    """``isvc`` changed to serve ``model_version``, as a canary when it makes sense.

    Everything else in the live object (resources, scaling, overlay patches) stays.
    A canary needs something to compare with: with no model rolled out yet, the
    same model, or ``canary_percent`` 100, the new model takes all traffic at once.

    Args:
        isvc: the live (or freshly built) InferenceService.
        storage_uri: where the new model's artifacts are.
        model_version: its registry version.
        canary_percent: share of traffic for the new model until promotion.
    """
    check_canary_percent(canary_percent)
    out = _clean(isvc)
    spec = out.setdefault("spec", {})
    stable = spec.get("predictor")
    if stable is None:
        raise ConfigError(f"InferenceService {out['metadata'].get('name')!r} has no spec.predictor")
    current_uri, _ = served_model(stable)
    full = canary_percent >= 100 or not current_uri or current_uri == storage_uri
    mode = deployment_mode(isvc)
    spec.pop("canary", None)
    if full or mode == KNATIVE:
        spec["predictor"] = _with_model(stable, storage_uri, model_version)
        if not full:
            spec["predictor"]["canaryTrafficPercent"] = canary_percent
    else:
        spec["canary"] = [
            {
                "trafficPercent": canary_percent,
                "predictor": _with_model(stable, storage_uri, model_version),
            }
        ]
    return out


def canary_in_flight(isvc: Mapping[str, Any]) -> bool:
    """Whether ``isvc`` still splits traffic between two models."""
    spec = isvc.get("spec") or {}
    pred = spec.get("predictor") or {}
    percent = pred.get("canaryTrafficPercent")
    return bool(spec.get("canary")) or (percent is not None and percent < 100)


def promote(isvc: Mapping[str, Any]) -> dict[str, Any]:
    """``isvc`` with the canary taking 100 % of traffic (unchanged if none is in flight)."""
    out = _clean(isvc)
    spec = out.setdefault("spec", {})
    canaries = spec.pop("canary", None)
    if canaries:
        spec["predictor"] = copy.deepcopy(canaries[0]["predictor"])
    spec.get("predictor", {}).pop("canaryTrafficPercent", None)
    return out


def rollback(isvc: Mapping[str, Any], storage_uri: str, model_version: str) -> dict[str, Any]:
    """``isvc`` serving ``model_version`` (the ``previous`` alias's) at 100 %, no canary."""
    return with_model(promote(isvc), storage_uri, model_version, 100)


def abort_canary(isvc: Mapping[str, Any]) -> dict[str, Any]:
    """``isvc`` with the canary dropped: all traffic back on the stable model.

    Knative keeps the last revision rolled out at 100 % and routes to it with
    ``canaryTrafficPercent: 0``; in Standard mode the ``spec.canary`` entry goes.
    """
    out = _clean(isvc)
    spec = out.setdefault("spec", {})
    if spec.pop("canary", None) is None and "canaryTrafficPercent" in spec.get("predictor", {}):
        spec["predictor"]["canaryTrafficPercent"] = 0
    return out


def is_ready(isvc: Mapping[str, Any]) -> bool:
    """Whether KServe reports the current generation Ready, with the newest revision
    ready too (Knative: ``latestReadyRevision == latestCreatedRevision``)."""
    meta = isvc.get("metadata") or {}
    status = isvc.get("status") or {}
    generation = meta.get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return False
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    pred = (status.get("components") or {}).get("predictor") or {}
    created = pred.get("latestCreatedRevision")
    if created and pred.get("latestReadyRevision") != created:
        return False
    return ready
