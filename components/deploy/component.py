from kfp import dsl
from kfp.dsl import Artifact, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy(
    model_name: str,
    model_version: str,
    mlflow_tracking_uri: str,
    artifacts_destination: str,
    serving_image: str,
    isvc_name: str,
    serving_namespace: str,
    deployment_mode: str,
    canary_traffic_percent: int,
    canary_soak_s: int,
    canary_min_requests: int,
    canary_max_error_rate: float,
    canary_max_p99_ratio: float,
    ready_timeout_s: int,
    manifest: Output[Artifact],
) -> str:
    """Roll the new champion out to the KServe InferenceService: a canary judged on its own
    metrics after a soak, then 100% (or back to the stable version, failing the step).

    Outside a cluster (the local runner) it writes the manifest and the steps it would take."""
    from pathlib import Path

    from clazzify.registry.tracking import TrackingConfig, activate
    from clazzify.rollout.canary import CanaryPolicy
    from clazzify.rollout.cluster import deploy_version, in_cluster, own_namespace
    from clazzify.rollout.isvc import InferenceServiceConfig

    activate(TrackingConfig(mlflow_tracking_uri))
    cfg = InferenceServiceConfig(
        image=serving_image,
        name=isvc_name,
        namespace=serving_namespace or own_namespace("clazzify"),
        model_name=model_name,
        deployment_mode=deployment_mode,
    )
    out = Path(manifest.path) / "inferenceservice.yaml"
    result = deploy_version(
        cfg,
        model_name,
        model_version,
        artifacts_destination,
        canary_traffic_percent,
        out,
        apply=in_cluster(),
        timeout_s=ready_timeout_s,
        policy=CanaryPolicy(soak_s=canary_soak_s, min_requests=canary_min_requests,
                            max_error_rate=canary_max_error_rate,
                            max_p99_ratio=canary_max_p99_ratio),
    )
    if result.steps:
        (Path(manifest.path) / "rollout-steps.txt").write_text(
            "".join(f"{i}. {step}\n" for i, step in enumerate(result.steps, 1)))
    manifest.metadata.update(
        {"action": result.action, "version": result.version, "storage_uri": result.storage_uri,
         "reason": result.reason}
    )
    print(
        f"deploy: {result.action} {model_name} version {result.version} "
        f"({result.storage_uri}); manifest: {out}"
    )
    return result.action
