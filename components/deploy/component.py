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
    ready_timeout_s: int,
    manifest: Output[Artifact],
) -> str:
    """Roll the new champion out to the KServe InferenceService (canary, then 100%).

    Outside a cluster (the local runner) it only writes the manifest it would apply."""
    from pathlib import Path

    from clazzify.registry.tracking import TrackingConfig, activate
    from clazzify.rollout.cluster import deploy_version, in_cluster, own_namespace
    from clazzify.rollout.deploy import InferenceServiceConfig

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
    )
    manifest.metadata.update(
        {"action": result.action, "version": result.version, "storage_uri": result.storage_uri}
    )
    print(
        f"deploy: {result.action} {model_name} version {result.version} "
        f"({result.storage_uri}); manifest: {out}"
    )
    return result.action
