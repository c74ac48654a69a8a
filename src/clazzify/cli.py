"""The ``clazzify`` command: every pipeline step, runnable by hand."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from clazzify.errors import ClazzifyError


def _fail(e: Exception) -> None:
    raise click.ClickException(str(e)) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="clazzify")
def main(verbose: bool) -> None:
    """clazzify: sort photos into content classes (food, ambiance, menu, human, ...).

    The training pipeline runs with `python pipelines/train.py run --local --source DIR`;
    these subcommands run its steps one by one.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", default=40, show_default=True, help="Images per class.")
@click.option("--size", default=96, show_default=True, help="Nominal image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--bad-files/--no-bad-files", default=True, show_default=True,
              help="Add a truncated, a non-image, a tiny and a duplicate file.")
def demo_data(out_dir: Path, per_class: int, size: int, seed: int, bad_files: bool) -> None:
    """Write the SYNTHETIC 4-class demo set to OUT_DIR/<class>/."""
    from clazzify.demo_data import write_demo_data

    try:
        counts = write_demo_data(out_dir, per_class, size=size, seed=seed, bad_files=bad_files)
    except ClazzifyError as e:
        _fail(e)
    click.echo(f"wrote {sum(counts.values())} synthetic files to {out_dir}: {counts}")


@main.command("ingest")
@click.argument("source")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for manifest.csv, quarantine.csv and the reports.")
@click.option("--val-fraction", default=0.15, show_default=True)
@click.option("--test-fraction", default=0.15, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--min-side", default=32, show_default=True, help="Quarantine smaller images.")
def ingest_cmd(source: str, out_dir: Path, val_fraction: float, test_fraction: float, seed: int,
               min_side: int) -> None:
    """Validate, de-duplicate and split SOURCE (class folders, s3:// prefix or CSV/JSONL manifest)."""
    from clazzify.ingest import IngestConfig, ingest_images

    try:
        cfg = IngestConfig(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                           min_side=min_side)
        report = ingest_images(source, out_dir / "manifest.csv", out_dir, cfg)
    except ClazzifyError as e:
        _fail(e)
    click.echo(report.to_markdown())


@main.command("preprocess")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for train.h5, val.h5, test.h5.")
@click.option("--image-size", default=227, show_default=True)
@click.option("--augment-copies", default=0, show_default=True,
              help="Augmented variants written per training image.")
@click.option("--workers", default=0, show_default=True, help="Processes (0 = one per core).")
@click.option("--seed", default=42, show_default=True)
def preprocess_cmd(manifest: Path, out_dir: Path, image_size: int, augment_copies: int, workers: int,
                   seed: int) -> None:
    """Build the HDF5 split files from an ingest MANIFEST."""
    from clazzify.preprocess import PreprocessConfig, build_hdf5

    try:
        cfg = PreprocessConfig(image_size=image_size, augment_copies=augment_copies, workers=workers,
                               seed=seed)
        paths = build_hdf5(manifest, out_dir, cfg)
    except ClazzifyError as e:
        _fail(e)
    click.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


@main.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--architecture", default="alexnet", show_default=True,
              help="alexnet, compact, mobilenet_v2, efficientnet_b0 or resnet50.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--learning-rate", default=1e-3, show_default=True)
@click.option("--init-weights", default=None, help="'imagenet' or a .weights.h5 file.")
@click.option("--track/--no-track", default=True, show_default=True, help="Log the run to MLflow.")
def train_cmd(data_dir: Path, out_dir: Path, architecture: str, epochs: int, batch_size: int,
              learning_rate: float, init_weights: str | None, track: bool) -> None:
    """Train on DATA_DIR/{train,val}.h5 and write a model bundle."""
    from clazzify.tracking import TrackingConfig, default_tracking_uri
    from clazzify.train import TrainConfig, train_model

    try:
        cfg = TrainConfig(architecture=architecture, epochs=epochs, batch_size=batch_size,
                          learning_rate=learning_rate, init_weights=init_weights)
        tracking = TrackingConfig(default_tracking_uri()) if track else None
        result = train_model(data_dir, out_dir, cfg, tracking=tracking)
    except ClazzifyError as e:
        _fail(e)
    click.echo(f"bundle: {result.bundle_dir}  best val accuracy {result.best_val_accuracy:.4f} "
               f"(epoch {result.best_epoch})  run {result.run_id}")


@main.command("evaluate")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("test_h5", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--engine", type=click.Choice(["onnx", "keras"]), default="onnx", show_default=True)
def evaluate_cmd(bundle_dir: Path, test_h5: Path, out_dir: Path, engine: str) -> None:
    """Evaluate a model bundle on an HDF5 split; writes metrics and plots."""
    from clazzify.evaluate import evaluate_model

    try:
        metrics = evaluate_model(bundle_dir, test_h5, out_dir, engine=engine)
    except ClazzifyError as e:
        _fail(e)
    click.echo(metrics.to_json())


@main.command("find-label-issues")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for label_issues.csv (relabel format) and label_issues.png.")
@click.option("--folds", default=5, show_default=True, help="k of k-fold.")
@click.option("--architecture", default="compact", show_default=True)
@click.option("--epochs", default=10, show_default=True, help="Epochs per fold.")
@click.option("--batch-size", default=32, show_default=True)
def find_label_issues_cmd(data_dir: Path, out_dir: Path, folds: int, architecture: str, epochs: int,
                          batch_size: int) -> None:
    """Rank likely mislabelled training images (out-of-fold scores + confident learning).

    Every image of DATA_DIR/train.h5 is scored by a model trained on the other folds;
    cleanlab ranks the labels the models most confidently dispute. Moderators fill
    the corrected_label column of the CSV; relabel-import turns it into a manifest.
    """
    from clazzify.label_issues import LabelIssueConfig, find_label_issues

    try:
        cfg = LabelIssueConfig(folds=folds, architecture=architecture, epochs=epochs, batch_size=batch_size)
        report = find_label_issues(data_dir, out_dir, cfg)
    except ClazzifyError as e:
        _fail(e)
    click.echo(f"{report.issues} likely label issues among {report.scored} training images "
               f"(out-of-fold accuracy {report.out_of_fold_accuracy:.3f}): {report.csv}, {report.grid}")
@main.command("serve", add_help_option=False,
              context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def serve_cmd(ctx: click.Context) -> None:
    """Serve a model over KServe V1/V2 (the same server as `python -m serving`; see --help)."""
    from serving.__main__ import main as serve_main

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
@click.option("--dry-run", is_flag=True, help="Print the manifest; change neither cluster nor registry.")
def rollback_cmd(model_name: str, tracking_uri: str, artifacts_destination: str, isvc_name: str,
                 namespace: str, timeout: int, dry_run: bool) -> None:
    """Serve the `previous` model version again and move `champion` back to it.

    The cluster changes first (kubeconfig or in-cluster credentials); the registry
    aliases move only once the InferenceService is Ready on the old version.
    """
    import yaml

    from clazzify import deploy, rollout
    from clazzify.registry import PREVIOUS
    from clazzify.tracking import TrackingConfig, activate

    try:
        activate(TrackingConfig(tracking_uri))
        target = rollout.resolve_version(model_name, PREVIOUS, artifacts_destination)
        api = rollout.kubernetes_api()
        if dry_run:
            live = api.get_namespaced_custom_object(deploy.GROUP, deploy.VERSION, namespace,
                                                    deploy.PLURAL, isvc_name)
            click.echo(yaml.safe_dump(deploy.rollback(live, target.storage_uri, target.version),
                                      sort_keys=False))
            return
        rollout.roll_back(api, namespace, isvc_name, target, timeout_s=timeout)
        champion, demoted = rollout.move_champion_back(model_name)
    except ClazzifyError as e:
        _fail(e)
    click.echo(f"rolled back: {namespace}/{isvc_name} serves {model_name} version {champion} "
               f"at 100%; version {demoted} is tagged rolled_back=true")


if __name__ == "__main__":
    sys.exit(main())
