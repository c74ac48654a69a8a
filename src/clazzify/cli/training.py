"""Training commands: the pipeline's steps one by one (demo data, ingest ... find-label-issues)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from clazzify.cli.main import main
from clazzify.core.bundle import BUNDLE_ENGINES
from clazzify.core.errors import StorageError
from clazzify.core.imaging import ImageLimits
from clazzify.training.models import DEFAULT_IMAGE_SIZE


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
@click.option("--seed", default=42, show_default=True,
              help="Salt of the split hash: keep it fixed, or every photo may change split.")
@click.option("--min-side", default=ImageLimits.min_side, show_default=True,
              help="Quarantine smaller images.")
@click.option("--shard-size", default=0, show_default=True,
              help="At most this many images per shard (the `shard` column; `preprocess --shard N` "
              "builds one); 0 = one shard.")
@click.option("--labels-from", "labels_from", default=None, metavar="DB_URL",
              help="Scores database (PostgreSQL or SQLite URL) whose manual labels override the "
              "folder/manifest labels of the photos they name (matched by URI).")
@click.option("--relabel-csv", default=None, metavar="CSV",
              help="Relabel CSV (relabel-export / find-label-issues, corrected_label filled in); "
              "its corrections override every other label.")
@click.option("--champion", "champion_model", default=None, metavar="MODEL_NAME",
              help="Count the photos new since this registered model's champion data set "
              "(MLflow at MLFLOW_TRACKING_URI or .clazzify/).")
@click.option("--pixels-for", "pixels_for", type=int, default=None, metavar="IMAGE_SIZE",
              help="Also keep every accepted photo's training pixels at this size in OUT/pixels/, one "
              "file per shard (from the validating decode; S*S*3 bytes of disk a photo), so "
              "`preprocess --pixel-cache OUT/pixels` copies them instead of decoding every photo again.")
def ingest_cmd(source: str, out_dir: Path, val_fraction: float, test_fraction: float, seed: int,
               min_side: int, shard_size: int, labels_from: str | None, relabel_csv: str | None,
               champion_model: str | None, pixels_for: int | None) -> None:
    """Validate, de-duplicate and split SOURCE (class folders, s3:// prefix or CSV/JSONL manifest)."""
    from clazzify.registry.tracking import default_tracking_uri
    from clazzify.scoring.labels import read_manual_labels
    from clazzify.training.ingest import IngestConfig, ingest_images, prepare_ingest

    cfg = IngestConfig(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                       limits=ImageLimits(min_side=min_side), shard_size=shard_size)
    tracking_uri = default_tracking_uri() if champion_model else None  # it makes .clazzify/: only when asked
    setup = prepare_ingest(labels_from=labels_from, relabel_csv=relabel_csv, read_manual_labels=read_manual_labels,
                           champion_model=champion_model, tracking_uri=tracking_uri,
                           workdir=out_dir / "champion")
    pixels = {"pixel_cache": out_dir / "pixels", "pixel_size": pixels_for} if pixels_for else {}
    report = ingest_images(source, out_dir / "manifest.csv", out_dir, cfg,
                           label_overrides=setup.label_overrides, champion_data=setup.champion_data, **pixels)
    click.echo(report.to_markdown())
    if pixels:
        click.echo(f"pixel cache: {pixels['pixel_cache']} (preprocess --image-size {pixels_for} --pixel-cache ...)")


@main.command("preprocess")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for train.h5, val.h5, test.h5 (train-NNNNN.h5 ... with --shard).")
@click.option("--image-size", default=DEFAULT_IMAGE_SIZE, show_default=True)
@click.option("--augment-copies", default=0, show_default=True,
              help="Augmented variants written per training image.")
@click.option("--workers", default=0, show_default=True, help="Processes (0 = one per core).")
@click.option("--seed", default=42, show_default=True)
@click.option("--shard", type=int, default=None,
              help="Build only this shard of the manifest (see `ingest --shard-size`); "
              "several shard outputs can share one folder, and train reads them all.")
@click.option("--pixel-cache", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The OUT/pixels folder that `ingest --pixels-for SIZE` wrote: photos it holds at this "
              "--image-size are copied, not decoded (same pixels); a cache of another size is ignored.")
def preprocess_cmd(manifest: Path, out_dir: Path, image_size: int, augment_copies: int, workers: int,
                   seed: int, shard: int | None, pixel_cache: Path | None) -> None:
    """Build the HDF5 split files from an ingest MANIFEST."""
    from clazzify.training.preprocess import PreprocessConfig, build_hdf5

    cfg = PreprocessConfig(image_size=image_size, augment_copies=augment_copies, workers=workers,
                           seed=seed)
    paths = build_hdf5(manifest, out_dir, cfg, shard=shard, pixel_cache=pixel_cache)
    click.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


@main.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--architecture", default="alexnet", show_default=True,
              help="alexnet, compact, mobilenet_v2, efficientnet_b0, resnet50 or efficientnet_lite0.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--learning-rate", default=1e-3, show_default=True)
@click.option("--init-weights", default=None,
              help="'packaged' (efficientnet_lite0's ImageNet weights from its package, offline), "
              "'imagenet' (keras.applications, needs network) or a .weights.h5 file.")
@click.option("--frozen-backbone", is_flag=True,
              help="Fit only a logistic-regression head on the pretrained backbone's features "
              "(the pipeline's default recipe; needs --init-weights).")
@click.option("--class-weighting", type=click.Choice(["none", "balanced", "sqrt"]), default="balanced",
              show_default=True)
@click.option("--feature-cache", default="", help="Folder caching backbone features across runs.")
@click.option("--track/--no-track", default=True, show_default=True, help="Log the run to MLflow.")
def train_cmd(data_dir: Path, out_dir: Path, architecture: str, epochs: int, batch_size: int,
              learning_rate: float, init_weights: str | None, frozen_backbone: bool, class_weighting: str,
              feature_cache: str, track: bool) -> None:
    """Train on DATA_DIR/{train,val}.h5 and write a model bundle (softmax temperature
    fitted on val and folded into the model)."""
    from clazzify.registry.tracking import TrackingConfig, default_tracking_uri
    from clazzify.training.train import TrainConfig, train_model

    cfg = TrainConfig(architecture=architecture, epochs=epochs, batch_size=batch_size,
                      learning_rate=learning_rate, init_weights=init_weights,
                      frozen_backbone=frozen_backbone, class_weighting=class_weighting,
                      feature_cache=feature_cache)
    tracking = TrackingConfig(default_tracking_uri()) if track else None
    result = train_model(data_dir, out_dir, cfg, tracking=tracking)
    click.echo(f"bundle: {result.bundle_dir}  best val accuracy {result.best_val_accuracy:.4f} "
               f"(epoch {result.best_epoch})  temperature {result.temperature:.3f}  run {result.run_id}")


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
    if report.warning:
        click.echo(f"Warning: {report.warning}", err=True)
# -- scoring: worker, backfill and the queries the scores exist for ---------------------------


@main.command("retrain")
@click.argument("source")
@click.option("--labels-from", "labels_from", default=None, metavar="DB_URL",
              help="Scores database whose manual labels count as new labels and feed the run.")
@click.option("--relabel-csv", default=None, metavar="CSV", help="Relabel CSV passed on to the run.")
@click.option("--min-new-photos", default=1000, show_default=True,
              help="Retrain when at least this many photos are new since the champion's data set (0 = off).")
@click.option("--min-new-labels", default=100, show_default=True,
              help="... or when at least this many manual labels were given since then (0 = off).")
@click.option("--model-name", default="clazzify", show_default=True)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path(".clazzify"),
              show_default=True, help="Local MLflow store and KFP outputs (as `pipelines.train run --home`).")
@click.option("--host", default=None, help="KFP API server: submit the run there instead of running locally.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Pipeline parameter for the run.")
@click.option("--checkout", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The repository checkout holding pipelines/train.py.")
@click.option("--dry-run", is_flag=True, help="Decide and print; start nothing.")
def retrain_cmd(source: str, labels_from: str | None, relabel_csv: str | None, min_new_photos: int,
                min_new_labels: int, model_name: str, home: Path, host: str | None, sets: tuple[str, ...],
                checkout: Path, dry_run: bool) -> None:
    """Run the training pipeline on SOURCE if enough is new since the champion's data set.

    Counts photos (by content hash) that the champion's data set did not hold and manual
    labels given after it was read; retrains when either reaches its threshold, then runs
    `python -m pipelines.train run --local` (or `submit --host`) from the checkout. The
    decision is printed as JSON; the exit status is 0 when nothing is retrained (or with
    --dry-run), else the run's own (3: its gate failed).
    """
    import subprocess
    import sys

    from clazzify.core import storage
    from clazzify.registry.tracking import default_tracking_uri
    from clazzify.scoring.labels import read_manual_labels
    from clazzify.training.trigger import RetrainPolicy, retrain_check

    # A source the pipeline could not read is a bad input now, not a failed run later.
    if storage.is_s3(source):
        storage.preflight(source)
    elif not storage.local_path(source).exists():
        raise StorageError(f"source {source} does not exist: pass a class-folder root, an "
                           "s3:// prefix or a CSV/JSONL manifest")
    decision = retrain_check(source, RetrainPolicy(min_new_photos, min_new_labels), model_name,
                             default_tracking_uri(home), labels_from=labels_from, read_manual_labels=read_manual_labels)
    click.echo(decision.to_json())
    if not decision.retrain or dry_run:
        return
    if not (checkout / "pipelines" / "train.py").exists():
        raise click.UsageError(f"{checkout} holds no pipelines/train.py: run from the checkout or pass --checkout")
    # The run starts in the checkout: paths given from here must mean there what they meant here.
    source, home = _from_here(source), home.resolve()
    params = [f"model_name={model_name}", *sets]
    if labels_from:
        params.append(f"labels_from={_sqlite_from_here(labels_from)}")
    if relabel_csv:
        params.append(f"relabel_csv={_from_here(relabel_csv)}")
    if host:
        cmd = [sys.executable, "-m", "pipelines.train", "submit", "--host", host, "--set", f"source={source}"]
    else:
        cmd = [sys.executable, "-m", "pipelines.train", "run", "--local", "--source", source, "--home", str(home)]
    for p in params:
        cmd += ["--set", p]
    click.echo(f"retraining: {' '.join(cmd)}", err=True)
    raise SystemExit(subprocess.run(cmd, cwd=checkout).returncode)


def _from_here(uri: str) -> str:
    """A local path made absolute (from the folder the command was called in); URLs unchanged."""
    return uri if "://" in uri else str(Path(uri).resolve())


def _sqlite_from_here(url: str) -> str:
    """``sqlite:///relative.db`` made absolute; other database URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(url.removeprefix(prefix)).resolve())
    return url
