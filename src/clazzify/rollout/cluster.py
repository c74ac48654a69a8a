"""Roll a registered model version out to KServe: resolve, apply, wait, promote.

The manifests come from the pure functions in :mod:`clazzify.rollout.isvc`; this module
is the edge that talks to MLflow and to the Kubernetes API. The Kubernetes client
is passed in (``kubernetes.client.CustomObjectsApi`` or anything with its
``get/create/replace_namespaced_custom_object`` methods), so the sequence can be
driven without a cluster.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clazzify.core.errors import ClazzifyError, ConfigError
from clazzify.registry import versions as registry
from clazzify.rollout import isvc
from clazzify.rollout.canary import CanaryPolicy, CanaryVerdict, Scrape, judge_canary, window

#: Reads the model server metrics of one model version's pods: version -> {pod: Scrape}.
ReadMetrics = Callable[[str], Mapping[str, Scrape]]
DEFAULT_POLICY = CanaryPolicy()

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RolloutError(ClazzifyError):
    """The InferenceService did not become ready, or the API refused a change."""


class CanaryRejected(RolloutError):
    """The canary's own metrics did not hold; it was rolled back (the reason says why)."""


@dataclass(frozen=True)
class Resolved:
    """A registry version and where KServe fetches it from."""

    version: str
    storage_uri: str


def resolve_version(model_name: str, version: str, artifacts_destination: str) -> Resolved:
    """The storage URI of ``model_name`` version ``version`` (or alias, e.g. ``previous``).

    Uses the active MLflow tracking/registry URI.

    Raises:
        ConfigError: the version or alias does not exist.
    """
    import mlflow

    mv = registry.get_version(model_name, version)
    uri = mlflow.MlflowClient().get_model_version_download_uri(model_name, str(mv.version))
    return Resolved(str(mv.version), isvc.storage_uri_for(uri, artifacts_destination))


def in_cluster() -> bool:
    """Whether this process runs in a Kubernetes pod (the kubelet sets this variable)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def own_namespace(default: str) -> str:
    """The pod's namespace (from its service account mount), else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


def write_manifest(manifest: dict[str, Any], path: Path) -> Path:
    """Write ``manifest`` as YAML (``kubectl apply -f`` takes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def _status(e: Exception) -> int | None:
    return getattr(e, "status", None)


def _get(api: Any, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api.get_namespaced_custom_object(
            isvc.GROUP, isvc.VERSION, namespace, isvc.PLURAL, name
        )
    except Exception as e:  # kubernetes.client.ApiException; the client is optional here
        if _status(e) == 404:
            return None
        raise RolloutError(f"cannot read InferenceService {namespace}/{name}: {e}") from e


def _replace(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    name = body["metadata"]["name"]
    try:
        return api.replace_namespaced_custom_object(
            isvc.GROUP, isvc.VERSION, namespace, isvc.PLURAL, name, body
        )
    except Exception as e:
        if _status(e) == 403:
            raise RolloutError(
                f"forbidden to update InferenceService {namespace}/{name}: bind the pipeline's "
                "service account to the Role in manifests/base/rbac.yaml"
            ) from e
        raise RolloutError(f"cannot update InferenceService {namespace}/{name}: {e}") from e


def _create(api: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return api.create_namespaced_custom_object(
            isvc.GROUP, isvc.VERSION, namespace, isvc.PLURAL, body
        )
    except Exception as e:
        raise RolloutError(
            f"cannot create InferenceService {namespace}/{body['metadata']['name']}: {e}"
        ) from e


def wait_ready(
    api: Any,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll until :func:`clazzify.rollout.isvc.is_ready`; returns the ready object.

    Raises:
        RolloutError: not ready within ``timeout_s`` (its last conditions in the message).
    """
    deadline = clock() + timeout_s
    while True:
        live = _get(api, namespace, name)
        if live is not None and isvc.is_ready(live):
            return live
        if clock() >= deadline:
            conditions = ((live or {}).get("status") or {}).get("conditions")
            raise RolloutError(
                f"InferenceService {namespace}/{name} not ready after {timeout_s:.0f}s; "
                f"conditions: {conditions}; see `kubectl describe isvc {name} -n {namespace}`"
            )
        sleep(poll_s)


@dataclass(frozen=True)
class RolloutResult:
    """What a rollout did: ``created``, ``rolled-out`` (100 % at once), ``promoted``
    (canary, judged, then 100 %), or ``written`` (local run: manifest and plan only);
    ``reason`` is the canary verdict's, ``steps`` what was (or would be) done, in order."""

    action: str
    version: str
    storage_uri: str
    manifest: dict[str, Any]
    reason: str = ""
    steps: list[str] = field(default_factory=list)


def roll_out(
    api: Any,
    cfg: isvc.InferenceServiceConfig,
    target: Resolved,
    canary_percent: int,
    *,
    read_metrics: ReadMetrics,
    policy: CanaryPolicy = DEFAULT_POLICY,
    timeout_s: float = 900,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """Create or update the InferenceService to serve ``target``; canary, soak, judge.

    Every update starts from the live object, so what the overlays set (resources,
    scaling, node placement) stays; only the model, its version and the traffic
    split change. A canary gets ``canary_percent`` of the traffic for ``policy.soak_s``;
    then both versions' own metrics over that window (``read_metrics``) decide: promote,
    or serve the stable version at 100 % again and raise :class:`CanaryRejected`.

    Raises:
        CanaryRejected: the canary's error rate or latency did not hold.
        RolloutError: the object never got ready, or the API refused a change.
    """
    isvc.check_canary_percent(canary_percent)
    live = _get(api, cfg.namespace, cfg.name)
    if live is None:
        body = isvc.inference_service(cfg, target.storage_uri, target.version)
        _create(api, cfg.namespace, body)
        log.info(
            "created InferenceService %s/%s serving version %s",
            cfg.namespace,
            cfg.name,
            target.version,
        )
        wait_ready(api, cfg.namespace, cfg.name, timeout_s, poll_s, sleep)
        return RolloutResult("created", target.version, target.storage_uri, body)
    stable_uri, stable_version = isvc.served_model(live["spec"]["predictor"])
    body = isvc.with_model(live, target.storage_uri, target.version, canary_percent)
    _replace(api, cfg.namespace, body)
    if not isvc.canary_in_flight(body):
        log.info("rolled version %s out to 100%%", target.version)
        wait_ready(api, cfg.namespace, cfg.name, timeout_s, poll_s, sleep)
        return RolloutResult("rolled-out", target.version, target.storage_uri, body)
    log.info(
        "canary: version %s takes %d%% of traffic; waiting until ready",
        target.version,
        canary_percent,
    )
    wait_ready(api, cfg.namespace, cfg.name, timeout_s, poll_s, sleep)
    verdict = soak_and_judge(target.version, stable_version, read_metrics, policy, sleep)
    ready = _get(api, cfg.namespace, cfg.name) or {}
    if not verdict.promote:
        log.error("canary rejected, rolling back: %s", verdict.reason)
        # The stable model at 100 % again, spec and all (not a canary left at 0 %), so the
        # object says what serves.
        _replace(api, cfg.namespace, isvc.rollback(ready, stable_uri or "", stable_version or ""))
        wait_ready(api, cfg.namespace, cfg.name, timeout_s, poll_s, sleep)
        raise CanaryRejected(
            f"canary rolled back, version {stable_version} serves all traffic: {verdict.reason}"
        )
    promoted = isvc.promote(ready)
    _replace(api, cfg.namespace, promoted)
    wait_ready(api, cfg.namespace, cfg.name, timeout_s, poll_s, sleep)
    log.info("promoted version %s to 100%%: %s", target.version, verdict.reason)
    return RolloutResult("promoted", target.version, target.storage_uri, promoted,
                         reason=verdict.reason)


def soak_and_judge(
    canary_version: str,
    stable_version: str | None,
    read_metrics: ReadMetrics,
    policy: CanaryPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryVerdict:
    """Scrape both versions, wait ``policy.soak_s``, scrape again, judge the window."""
    versions = [v for v in (canary_version, stable_version) if v]
    before = {v: dict(read_metrics(v)) for v in versions}
    log.info("canary: soaking %.0fs before judging version %s against %s", policy.soak_s,
             canary_version, stable_version)
    sleep(policy.soak_s)
    after = {v: dict(read_metrics(v)) for v in versions}
    canary = window(canary_version, before[canary_version], after[canary_version])
    stable = (window(stable_version, before[stable_version], after[stable_version])
              if stable_version else None)
    return judge_canary(canary, stable, policy)


def rollout_plan(cfg: isvc.InferenceServiceConfig, target: Resolved, canary_percent: int,
                 policy: CanaryPolicy) -> list[str]:
    """The steps :func:`roll_out` takes on a cluster whose InferenceService serves an older
    version (what a local run writes instead of doing them)."""
    where = f"InferenceService {cfg.namespace}/{cfg.name}"
    first = (f"if {where} does not exist yet: create it serving version {target.version} at "
             "100%, wait until Ready, and stop there (no canary without a stable version)")
    if canary_percent >= 100:
        return [first, f"replace {where} to serve version {target.version} ({target.storage_uri}) "
                "at 100%", "wait until Ready (KServe's Ready condition, latest revision ready)"]
    return [
        first,
        f"replace {where}: version {target.version} ({target.storage_uri}) as a canary taking "
        f"{canary_percent}% of traffic ({cfg.deployment_mode} mode); the stable version "
        "keeps the rest",
        "wait until Ready",
        "scrape /metrics of the pods of both versions (label serving.kserve.io/"
        f"inferenceservice={cfg.name}, annotation {isvc.VERSION_ANNOTATION})",
        f"soak {policy.soak_s:.0f}s, then scrape again",
        f"judge the window: promote only if the canary answered >= {policy.min_requests} "
        f"inferences, its server-error rate is <= {policy.max_error_rate:.2%} (or within "
        f"{policy.error_rate_margin:.2%} of the stable version's) and its p99 is <= "
        f"{policy.max_p99_ratio:.1f}x the stable version's (p99s under "
        f"{policy.p99_floor_s * 1000:.0f} ms always pass)",
        f"promote: version {target.version} takes 100%, wait until Ready",
        "otherwise: send all traffic back to the stable version, wait until Ready, and fail "
        "the run with the verdict's reason",
    ]


def pod_metrics(namespace: str, isvc_name: str, port: int = isvc.HTTP_PORT,
                timeout_s: float = 5.0) -> ReadMetrics:
    """A :data:`ReadMetrics` that scrapes ``/metrics`` of each running predictor pod of
    ``isvc_name`` whose ``clazzify.io/model-version`` annotation (KServe copies predictor
    annotations to the pods) names the version. Needs ``list`` on pods (rbac.yaml)."""
    import httpx
    from kubernetes import client

    from clazzify.rollout.canary import parse_metrics

    core = client.CoreV1Api()

    def read(version: str) -> dict[str, Scrape]:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"serving.kserve.io/inferenceservice={isvc_name}"
        ).items
        out: dict[str, Scrape] = {}
        for pod in pods:
            annotations = pod.metadata.annotations or {}
            if annotations.get(isvc.VERSION_ANNOTATION) != version:
                continue
            if pod.status.phase != "Running" or not pod.status.pod_ip:
                continue
            try:
                resp = httpx.get(f"http://{pod.status.pod_ip}:{port}/metrics", timeout=timeout_s)
                resp.raise_for_status()
            except httpx.HTTPError as e:
                log.warning("cannot scrape pod %s: %s", pod.metadata.name, e)
                continue
            out[pod.metadata.name] = parse_metrics(resp.text)
        return out

    return read


def kubernetes_api(purpose: str = "") -> Any:
    """A ``CustomObjectsApi`` from the pod's service account, else from kubeconfig.

    Args:
        purpose: what the caller needs the cluster for, put first in the error (e.g.
            "rollback --dry-run reads the live InferenceService").

    Raises:
        RolloutError: no credentials; one line naming KUBECONFIG.
    """
    from kubernetes import client, config

    try:
        if in_cluster():
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except (config.ConfigException, OSError) as e:
        reason = " ".join(str(e).split())  # the client's messages span lines; ours is one
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise RolloutError(
            f"{purpose + ': ' if purpose else ''}no Kubernetes credentials in {where} ({reason}): "
            "set KUBECONFIG to a cluster's kube-config or run inside the cluster"
        ) from e
    return client.CustomObjectsApi()


def deploy_version(
    cfg: isvc.InferenceServiceConfig,
    model_name: str,
    version: str,
    artifacts_destination: str,
    canary_percent: int,
    manifest_path: Path,
    *,
    apply: bool,
    timeout_s: float = 900,
    policy: CanaryPolicy = DEFAULT_POLICY,
) -> RolloutResult:
    """Resolve ``version`` in MLflow, then apply it (``apply``) or only write the manifest.

    The manifest written to ``manifest_path`` is the full InferenceService for the
    version, in both cases: what was (or would be) applied. A local run also returns
    the rollout's steps (:func:`rollout_plan`) in ``steps``.
    """
    target = resolve_version(model_name, version, artifacts_destination)
    manifest = isvc.inference_service(cfg, target.storage_uri, target.version)
    write_manifest(manifest, manifest_path)
    if not apply:
        log.warning(
            "not in a Kubernetes cluster: wrote the InferenceService for %s version %s to %s "
            "instead of applying it (kubectl apply -f %s)",
            model_name,
            target.version,
            manifest_path,
            manifest_path,
        )
        return RolloutResult("written", target.version, target.storage_uri, manifest,
                             steps=rollout_plan(cfg, target, canary_percent, policy))
    if target.storage_uri.startswith("file://"):
        raise ConfigError(
            f"{target.storage_uri} is on this machine, out of the cluster's reach: run MLflow with "
            "--serve-artifacts --artifacts-destination s3://... (manifests/base/mlflow.yaml)"
        )
    rejected = registry.canary_rejection(model_name, target.version)
    if rejected:
        raise CanaryRejected(f"version {target.version} was rejected as a canary before "
                             f"({rejected}); register a new candidate instead")
    try:
        result = roll_out(kubernetes_api(), cfg, target, canary_percent,
                          read_metrics=pod_metrics(cfg.namespace, cfg.name), policy=policy,
                          timeout_s=timeout_s)
    except CanaryRejected as e:
        registry.reject_canary(model_name, target.version, str(e))
        raise
    write_manifest(result.manifest, manifest_path)
    return result


def get_inference_service(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """The live InferenceService ``namespace/name``.

    Raises:
        RolloutError: it does not exist, or the API refused the read.
    """
    live = _get(api, namespace, name)
    if live is None:
        raise RolloutError(f"no InferenceService {namespace}/{name} on the cluster: check --name "
                           "and --namespace (kubectl get isvc -A)")
    return live


def roll_back(
    api: Any,
    namespace: str,
    name: str,
    target: Resolved,
    timeout_s: float = 900,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """Serve ``target`` (the ``previous`` version) at 100 % on the live InferenceService.

    Raises:
        RolloutError: there is no InferenceService to roll back, or it never got ready.
    """
    live = get_inference_service(api, namespace, name)
    body = isvc.rollback(live, target.storage_uri, target.version)
    _replace(api, namespace, body)
    wait_ready(api, namespace, name, timeout_s, poll_s, sleep)
    return RolloutResult("rolled-back", target.version, target.storage_uri, body)
