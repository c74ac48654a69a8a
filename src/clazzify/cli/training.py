"""Training commands: the pipeline's steps one by one (demo data, ingest ... find-label-issues)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clazzify.cli.main import main
from clazzify.core.bundle import BUNDLE_ENGINES
from clazzify.core.imaging import ImageLimits


@main.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-class", default=40, show_default=True, help="Images per class.")
@click.option("--size", default=96, show_default=True, help="Nominal image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--bad-files/--no-bad-files", default=True, show_default=True,
              help="Add a truncated, a non-image, a tiny and a duplicate file.")
def demo_data(out_dir: Path, per_class: int, size: int, seed: int, bad_files: bool) -> None:
    """Write the SYNTHETIC 4-class demo set to OUT_DIR/<class>/."""
    from clazzify.training.demo_data import write_demo_data

    counts = write_demo_data(out_dir, per_class, size=size, seed=seed, bad_files=bad_files)
    click.echo(f"wrote {sum(counts.values())} synthetic files to {out_dir}: {counts}")


@main.command("ingest")
@click.argument("source")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for manifest.csv, quarantine.csv and the reports.")
@click.option("--val-fraction", default=0.15, show_default=True)
@click.option("--test-fraction", default=0.15, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--min-side", default=ImageLimits.min_side, show_default=True,
              help="Quarantine smaller images.")
@click.option("--shard-size", default=0, show_default=True,
              help="At most this many images per shard (the `shard` column; `preprocess --shard N` "
              "builds one); 0 = one shard.")
def ingest_cmd(source: str, out_dir: Path, val_fraction: float, test_fraction: float, seed: int,
               min_side: int, shard_size: int) -> None:
    """Validate, de-duplicate and split SOURCE (class folders, s3:// prefix or CSV/JSONL manifest)."""
    from clazzify.training.ingest import IngestConfig, ingest_images

    cfg = IngestConfig(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                       limits=ImageLimits(min_side=min_side), shard_size=shard_size)
    report = ingest_images(source, out_dir / "manifest.csv", out_dir, cfg)
    click.echo(report.to_markdown())


@main.command("preprocess")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for train.h5, val.h5, test.h5 (train-NNNNN.h5 ... with --shard).")
@click.option("--image-size", default=227, show_default=True)
@click.option("--augment-copies", default=0, show_default=True,
              help="Augmented variants written per training image.")
@click.option("--workers", default=0, show_default=True, help="Processes (0 = one per core).")
@click.option("--seed", default=42, show_default=True)
@click.option("--shard", type=int, default=None,
              help="Build only this shard of the manifest (see `ingest --shard-size`); "
              "several shard outputs can share one folder, and train reads them all.")
def preprocess_cmd(manifest: Path, out_dir: Path, image_size: int, augment_copies: int, workers: int,
                   seed: int, shard: int | None) -> None:
    """Build the HDF5 split files from an ingest MANIFEST."""
    from clazzify.training.preprocess import PreprocessConfig, build_hdf5

    cfg = PreprocessConfig(image_size=image_size, augment_copies=augment_copies, workers=workers,
                           seed=seed)
    paths = build_hdf5(manifest, out_dir, cfg, shard=shard)
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
    from clazzify.registry.tracking import TrackingConfig, default_tracking_uri
    from clazzify.training.train import TrainConfig, train_model

    cfg = TrainConfig(architecture=architecture, epochs=epochs, batch_size=batch_size,
                      learning_rate=learning_rate, init_weights=init_weights)
    tracking = TrackingConfig(default_tracking_uri()) if track else None
    result = train_model(data_dir, out_dir, cfg, tracking=tracking)
    click.echo(f"bundle: {result.bundle_dir}  best val accuracy {result.best_val_accuracy:.4f} "
               f"(epoch {result.best_epoch})  run {result.run_id}")


@main.command("evaluate")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("test_h5", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--engine", type=click.Choice(BUNDLE_ENGINES), default="onnx", show_default=True)
def evaluate_cmd(bundle_dir: Path, test_h5: tuple[Path, ...], out_dir: Path, engine: str) -> None:
    """Evaluate a model bundle on an HDF5 split (TEST_H5: one file or every shard); writes
    metrics and plots."""
    from clazzify.training.evaluate import evaluate_model

    metrics = evaluate_model(bundle_dir, test_h5, out_dir, engine=engine)
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
    from clazzify.training.label_issues import LabelIssueConfig, find_label_issues

    cfg = LabelIssueConfig(folds=folds, architecture=architecture, epochs=epochs, batch_size=batch_size)
    report = find_label_issues(data_dir, out_dir, cfg)
    click.echo(f"{report.issues} likely label issues among {report.scored} training images "
               f"(out-of-fold accuracy {report.out_of_fold_accuracy:.3f}): {report.csv}, {report.grid}")
# -- scoring: worker, backfill and the queries the scores exist for ---------------------------
