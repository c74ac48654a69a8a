"""Train: Keras 3 on TensorFlow, fed out of core from the HDF5 split files.

Uses every visible GPU (MirroredStrategy) with mixed precision, the CPU
otherwise. Early stopping keeps the best epoch; with a checkpoint folder a
restarted run resumes from its last finished epoch. The result is a model
bundle (.keras + ONNX + metadata) and, when tracking is on, an MLflow run with
the resolved config, per-epoch metrics, class counts and the learning curve.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

import clazzify
from clazzify.core import storage
from clazzify.core.bundle import BundleMeta
from clazzify.core.errors import ConfigError, DataError, StorageError
from clazzify.registry.tracking import TrackingConfig, activate, epoch_logger, flatten_params
from clazzify.training.data import DataDirs, inspect_split, make_dataset, read_column, split_files
from clazzify.training.export import export_bundle
from clazzify.training.models import ModelSpec, build_model
from clazzify.training.plots import plot_history

MIXED_PRECISION = ("auto", "on", "off")
CLASS_WEIGHTING = ("balanced", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training step.

    Attributes:
        architecture: see :data:`clazzify.training.models.ARCHITECTURES`.
        epochs: maximum epochs.
        batch_size: global batch size (split across GPUs).
        learning_rate: peak learning rate of Adam (cosine decay to 0).
        init_weights: None, 'imagenet' or a weights file.
        augment: online augmentation layers in the model.
        patience: early-stopping patience in epochs (0 disables early stopping).
        label_smoothing: cross-entropy label smoothing.
        mixed_precision: 'auto' (on when a GPU is visible), 'on' or 'off'.
        seed: seed for weights init and shuffling.
        onnx: also export ONNX.
        class_weighting: 'balanced' weighs each class's loss by total / (classes x its
            count), so a rare class (few ambiance shots) is not sacrificed; 'none'.
    """

    architecture: str = "alexnet"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    init_weights: str | None = None
    augment: bool = True
    patience: int = 5
    label_smoothing: float = 0.0
    mixed_precision: str = "auto"
    seed: int = 42
    onnx: bool = True
    class_weighting: str = "balanced"

    def __post_init__(self) -> None:
        if self.class_weighting not in CLASS_WEIGHTING:
            raise ConfigError(f"class_weighting must be one of {CLASS_WEIGHTING}, got {self.class_weighting!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 10:
            raise ConfigError(f"learning_rate must be in (0, 10), got {self.learning_rate}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )


@dataclass
class TrainResult:
    """What training produced."""

    bundle_dir: Path
    history: dict[str, list[float]]
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    seconds: float
    devices: list[str]
    run_id: str | None = None
    class_counts: dict[str, int] = field(default_factory=dict)


def balanced_class_weights(counts: Sequence[int]) -> dict[int, float]:
    """``total / (classes x count)`` per class index; classes with no images get 0."""
    total, k = sum(counts), len(counts)
    return {i: (total / (k * n) if n else 0.0) for i, n in enumerate(counts)}


def class_counts(paths: list[Path], class_names: list[str]) -> dict[str, int]:
    counts = Counter(read_column(paths, "labels").tolist())
    return {name: int(counts.get(i, 0)) for i, name in enumerate(class_names)}


def fetch_weights(init_weights: str | None, out_dir: Path) -> str | None:
    """``None``/``imagenet`` pass through; an s3:// weights file is downloaded into ``out_dir``."""
    if not init_weights or init_weights == "imagenet" or not storage.is_s3(init_weights):
        return init_weights
    name = init_weights.rsplit("/", 1)[-1]
    local = out_dir / "init_weights" / name
    try:
        storage.write_bytes(str(local), storage.read_bytes(init_weights))
    except StorageError as e:
        raise ConfigError(f"cannot fetch init_weights {init_weights}: {e}") from e
    return str(local)


def _strategy_and_devices(cfg: TrainConfig):
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    use_mixed = cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    devices = [g.name for g in gpus] or ["CPU"]
    return strategy, devices


def _compile(model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.learning_rate, decay_steps=max(1, steps_per_epoch * cfg.epochs)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )


def train_model(
    data_dirs: DataDirs,
    out_dir: Path,
    cfg: TrainConfig = TrainConfig(),
    *,
    tracking: TrackingConfig | None = None,
    checkpoint_dir: Path | None = None,
    callbacks: Sequence = (),
    verbose: int = 2,
) -> TrainResult:
    """Train on the train/val HDF5 files of ``data_dirs``; write a bundle to ``out_dir/bundle``.

    Args:
        data_dirs: folder(s) written by :func:`clazzify.training.preprocess.build_hdf5`: whole
            splits (``train.h5``) or shards (``train-00000.h5`` ...), all read as one set.
        out_dir: output folder (bundle, plots, history).
        cfg: training settings.
        tracking: log to this MLflow experiment/run; None logs nothing.
        checkpoint_dir: per-epoch backup for resuming; default ``out_dir/backup``.
        callbacks: extra Keras callbacks.
        verbose: Keras verbosity (2 = one line per epoch).

    Raises:
        DataError: missing or inconsistent HDF5 files.
        ConfigError: bad settings.
    """
    import keras
    import tensorflow as tf

    train_paths, val_paths = split_files(data_dirs, "train"), split_files(data_dirs, "val")
    info, val_info = inspect_split(train_paths), inspect_split(val_paths)
    if info.class_names != val_info.class_names or info.image_size != val_info.image_size:
        raise DataError(f"train and val files in {data_dirs} disagree on classes or image size")
    class_names = list(info.class_names)
    num_classes = len(class_names)
    with h5py.File(train_paths[0], "r") as f:
        fingerprint = str(f.attrs.get("fingerprint", ""))
    counts = class_counts(train_paths, class_names)

    keras.utils.set_random_seed(cfg.seed)
    strategy, devices = _strategy_and_devices(cfg)

    def one_hot(images, labels):
        return images, tf.one_hot(labels, num_classes)

    train_ds = make_dataset(train_paths, cfg.batch_size, shuffle=True, seed=cfg.seed).map(one_hot)
    val_ds = make_dataset(val_paths, cfg.batch_size, shuffle=False).map(one_hot)
    steps = int(np.ceil(info.total / cfg.batch_size))

    spec = ModelSpec(
        architecture=cfg.architecture,
        num_classes=num_classes,
        image_size=info.image_size,
        init_weights=fetch_weights(cfg.init_weights, out_dir),
        augment=cfg.augment,
    )
    with strategy.scope():
        model = build_model(spec)
        _compile(model, cfg, steps)

    out_dir.mkdir(parents=True, exist_ok=True)
    best_path = out_dir / "best.weights.h5"
    extra = list(callbacks)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            best_path, monitor="val_accuracy", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.BackupAndRestore(str(checkpoint_dir or out_dir / "backup")),
    ]
    if cfg.patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.patience)
        )

    import mlflow

    run = None
    if tracking:
        activate(tracking)
        run = mlflow.start_run(run_id=tracking.run_id, run_name=tracking.run_name)
        mlflow.log_params(flatten_params({"train": asdict(cfg), "data": {
            "image_size": info.image_size,
            "classes": ",".join(class_names),
            "train_rows": info.total,
            "val_rows": val_info.total,
            "fingerprint": fingerprint,
        }}))
        mlflow.log_dict(counts, "data/class_counts.json")
        mlflow.set_tags({"clazzify.version": clazzify.__version__, "dataset.fingerprint": fingerprint})
        callbacks.append(epoch_logger())
    callbacks += extra  # after the backup, so a failing extra callback leaves a backup
    try:
        start = time.perf_counter()
        fit = model.fit(
            train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=verbose,
            class_weight=balanced_class_weights(list(counts.values())) if cfg.class_weighting == "balanced" else None,
            shuffle=False,  # tf.data shuffles blocks and rows itself
        )
        seconds = time.perf_counter() - start
        history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
        if best_path.is_file():
            model.load_weights(best_path)
        val_acc = history.get("val_accuracy", [0.0])
        best_epoch = int(np.argmax(val_acc))
        meta = BundleMeta(
            class_names=class_names,
            image_size=info.image_size,
            architecture=cfg.architecture,
            fingerprint=fingerprint,
            code_version=clazzify.__version__,
        )
        keras.mixed_precision.set_global_policy("float32")
        bundle_dir = export_bundle(model, meta, out_dir / "bundle", onnx=cfg.onnx)
        (out_dir / "history.json").write_text(json.dumps(history, indent=2))
        curve = plot_history(history, out_dir / "learning_curve.png")
        result = TrainResult(
            bundle_dir=bundle_dir,
            history=history,
            best_epoch=best_epoch + 1,
            best_val_accuracy=float(val_acc[best_epoch]),
            epochs_run=len(val_acc),
            seconds=seconds,
            devices=devices,
            class_counts=counts,
        )
        if run:
            mlflow.log_metrics({"best_val_accuracy": result.best_val_accuracy,
                                "train_seconds": seconds, "epochs_run": result.epochs_run})
            mlflow.log_artifact(str(curve), "plots")
            result.run_id = run.info.run_id
        return result
    finally:
        if run:
            mlflow.end_run()
