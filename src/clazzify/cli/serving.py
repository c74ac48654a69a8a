"""Serving commands: the model server and rolling the champion back."""

from __future__ import annotations

import click

from clazzify.cli.main import main


@main.command("serve", add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def serve_cmd(ctx: click.Context) -> None:
    """Serve a model over KServe V1/V2 (the same server as `python -m serving`; see --help)."""
    from clazzify.serving.server import main as serve_main

    serve_main.main(args=ctx.args, prog_name="clazzify serve")




@main.command("rollback")
@click.option("--model-name", default="clazzify", show_default=True, help="Registered model name.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", required=True,
              help="MLflow tracking/registry URI (or MLFLOW_TRACKING_URI).")
@click.option("--artifacts-destination", default="s3://mlflow", show_default=True,
              help="The MLflow server's --artifacts-destination (maps mlflow-artifacts:/ to S3).")
@click.option("--name", "isvc_name", default="clazzify", show_default=True, help="InferenceService name.")
@click.option("--namespace", default="clazzify", show_default=True, help="Its namespace.")
@click.option("--timeout", default=900, show_default=True, help="Seconds to wait for Ready.")
@click.option("--dry-run", is_flag=True,
              help="Print the manifest the rollback would apply, changing nothing. It still reads "
                   "the registry and the live InferenceService from the cluster (needs kube-config).")
def rollback_cmd(model_name: str, tracking_uri: str, artifacts_destination: str, isvc_name: str,
                 namespace: str, timeout: int, dry_run: bool) -> None:
    """Serve the `previous` model version again and move `champion` back to it.

    The cluster changes first (kubeconfig or in-cluster credentials); the registry
    aliases move only once the InferenceService is Ready on the old version.
    """
    import yaml

    from clazzify.registry.tracking import TrackingConfig, activate
    from clazzify.registry.versions import PREVIOUS, move_champion_back
    from clazzify.rollout import cluster as rollout
    from clazzify.rollout import isvc

    activate(TrackingConfig(tracking_uri))
    target = rollout.resolve_version(model_name, PREVIOUS, artifacts_destination)
    if dry_run:
        api = rollout.kubernetes_api(f"rollback --dry-run reads InferenceService {namespace}/{isvc_name} "
                                     "from the cluster")
        live = rollout.get_inference_service(api, namespace, isvc_name)
        click.echo(f"dry run: read InferenceService {namespace}/{isvc_name} from the cluster and "
                   f"{model_name}@{PREVIOUS} (version {target.version}) from the registry; "
                   "changed neither. The rollback would apply:", err=True)
        click.echo(yaml.safe_dump(isvc.rollback(live, target.storage_uri, target.version),
                                  sort_keys=False))
        return
    api = rollout.kubernetes_api("rollback changes the InferenceService on the cluster")
    rollout.roll_back(api, namespace, isvc_name, target, timeout_s=timeout)
    champion, demoted = move_champion_back(model_name)
    click.echo(f"rolled back: {namespace}/{isvc_name} serves {model_name} version {champion} "
               f"at 100%; version {demoted} is tagged rolled_back=true")
