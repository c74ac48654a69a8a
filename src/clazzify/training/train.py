"""Train: Keras 3 on TensorFlow or JAX, fed out of core from the HDF5 split files.

One function for both backends (``KERAS_BACKEND``): on TensorFlow the batches come
through ``tf.data`` and several GPUs train under MirroredStrategy; on JAX through a
``keras.utils.PyDataset`` and ``keras.distribution.DataParallel``. Mixed precision
is bf16 where every GPU has it (compute capability >= 8.0), fp16 on older GPUs, off on
the CPU unless asked for. Early stopping keeps the best epoch; with a checkpoint folder a
restarted run resumes from its last finished epoch. The result is a model
bundle (.keras + ONNX + metadata) and, when tracking is on, an MLflow run with
the resolved config, per-epoch metrics, class counts and the learning curve.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

import clazzify
from clazzify.core import storage
from clazzify.core.bundle import BundleMeta
from clazzify.core.errors import ConfigError, DataError, StorageError
from clazzify.core.ood import OodRule
from clazzify.registry.tracking import TrackingConfig, activate, epoch_logger, flatten_params
from clazzify.training.calibration import apply_temperature, fit_temperature
from clazzify.training.data import DataDirs, inspect_split, make_dataset, pydataset, read_column, read_rows, split_files
from clazzify.training.export import export_bundle
from clazzify.training.head import (
    CLASS_WEIGHTING,
    ColumnScaling,
    FeatureCache,
    class_weights,
    extract_features,
    fit_head,
    image_features,
    softmax,
)
from clazzify.training.models import ModelSpec, build_model, feature_model, tap_start
from clazzify.training.ood import threshold_at_false_flag_rate
from clazzify.training.plots import plot_history

MIXED_PRECISION = ("auto", "on", "off")
__all__ = ["CLASS_WEIGHTING", "TrainConfig", "TrainResult", "train_model"]


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
        mixed_precision: 'auto' (on when a GPU is visible), 'on' or 'off'; 'on' is bf16
            where the hardware has it (see :func:`precision_policy`).
        seed: seed for weights init and shuffling.
        onnx: also export ONNX.
        class_weighting: 'balanced' weighs each class's loss by total / (classes x its
            count), so a rare class (few ambiance shots) is not sacrificed; 'sqrt' by the
            square root of that; 'none'.
        frozen_backbone: keep the pretrained backbone as it is: compute its features once per
            image (no augmentation) and fit only the classifier, a multinomial logistic
            regression (:mod:`clazzify.training.head`); ``epochs``, ``learning_rate``,
            ``batch_size`` (except for feature batches) and ``label_smoothing`` do not apply.
        head_l2: L2 penalty of that regression.
        feature_cache: folder caching backbone features by image pixels ('' = none).
        calibrate: fit a softmax temperature on the validation split and fold it into the
            classifier, so every consumer of the model gets calibrated probabilities.
        ood_source: photos that are none of the classes (folder of category folders, or a
            manifest; :func:`clazzify.training.ood.load_outliers`): with a frozen backbone
            they train a "not a class" output beside the classes (outlier exposure). ''
            uses the training-free maximum softmax probability instead.
        ood_false_flag_rate: the share of in-distribution validation photos the unknown
            threshold is set to flag.
        ood_limit: at most this many ``ood_source`` photos (they are decoded in memory).
        ood_marked: URIs of photos moderators marked "not a class": extra examples of the
            "not a class" output, beside ``ood_source`` (the entry point reads them from the
            scores database; training reads no database).
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
    frozen_backbone: bool = False
    head_l2: float = 1.0
    feature_cache: str = ""
    calibrate: bool = True
    ood_source: str = ""
    ood_false_flag_rate: float = 0.02
    ood_limit: int = 5000
    ood_marked: tuple[str, ...] = ()

    @property
    def outlier_exposure(self) -> bool:
        """Whether the head learns a "not a class" output (an OOD source or moderators' marks)."""
        return bool(self.ood_source or self.ood_marked)

    def __post_init__(self) -> None:
        if self.outlier_exposure and not self.frozen_backbone:
            raise ConfigError("ood_source needs frozen_backbone=true (the 'not a class' output is fitted on "
                              "frozen features); leave ood_source empty for the training-free score")
        if not 0 < self.ood_false_flag_rate <= 0.5:
            raise ConfigError(f"ood_false_flag_rate must be in (0, 0.5], got {self.ood_false_flag_rate}")
        if self.ood_limit < 1:
            raise ConfigError(f"ood_limit must be >= 1, got {self.ood_limit}")
        if self.head_l2 <= 0:
            raise ConfigError(f"head_l2 must be > 0, got {self.head_l2}")
        if self.frozen_backbone and not self.init_weights:
            raise ConfigError(
                "frozen_backbone needs pretrained weights (init_weights=packaged, imagenet or a file): "
                "a frozen random backbone learns nothing"
            )
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
    temperature: float = 1.0
    ood: dict | None = None


def balanced_class_weights(counts: Sequence[int]) -> dict[int, float]:
    """``total / (classes x count)`` per class index; classes with no images get 0."""
    return class_weights(counts, "balanced")


def fold_temperature(model, temperature: float) -> None:
    """Divide the classifier's logits by ``temperature`` (its kernel and bias), so the
    model's own softmax gives the calibrated probabilities."""
    probs = model.get_layer("core").get_layer("probs")
    kernel, bias = probs.get_weights()
    probs.set_weights([kernel / temperature, bias / temperature])


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))))


def _train_head(model, spec: ModelSpec, cfg: TrainConfig, train_paths, val_paths, num_classes: int):
    """Fit the classifier (and its unknown rule) on frozen features.

    Returns ``(history, OodFit)``: the fit's kernel has the temperature folded in already
    and one more column than the classes when ``cfg.ood_source`` trained a "not a class"
    output; it is written into the model's ``probs`` layer here.
    """
    from clazzify.training.ood import fit_head_with_ood, load_outliers, split_rejection

    fm = feature_model(model)
    weights = cfg.init_weights if cfg.init_weights in ("packaged", "imagenet") else "file"
    start = tap_start(spec)
    taps = "-taps" if start is not None else ""
    cache = FeatureCache(cfg.feature_cache or None, f"{spec.architecture}{taps}-{weights}-{spec.image_size}")
    x_train, y_train = extract_features(fm, train_paths, cache=cache, batch_size=cfg.batch_size)
    x_val, y_val = extract_features(fm, val_paths, cache=cache, batch_size=cfg.batch_size)
    scaling = ColumnScaling.fit(x_train, start)
    x_train, x_val = scaling.apply(x_train), scaling.apply(x_val)
    outliers = None
    categories: list[str] = []
    groups: list[str] = []
    if cfg.outlier_exposure:
        found = load_outliers(cfg.ood_source, spec.image_size, limit=cfg.ood_limit, extra=cfg.ood_marked)
        outliers = scaling.apply(image_features(fm, found.images, cfg.batch_size))
        categories, groups = found.categories, found.groups
    fit = fit_head_with_ood(
        x_train, y_train, x_val, y_val, num_classes, l2=cfg.head_l2, rate=cfg.ood_false_flag_rate,
        outliers=outliers, categories=categories, groups=groups, calibrate=cfg.calibrate,
        fit_plain=lambda x, y, k: fit_head(x, y, k, class_weighting=cfg.class_weighting, l2=cfg.head_l2))
    if outliers is not None:
        fit.measured["outliers"] = {"photos": len(outliers), "skipped": len(found.skipped),
                                    "categories": dict(Counter(categories))}
    model.get_layer("core").get_layer("probs").set_weights(list(scaling.fold(fit.kernel, fit.bias)))

    def class_probs(x):
        logits = x @ fit.kernel + fit.bias
        return split_rejection(logits)[0] if fit.method == "outlier_exposure" else softmax(logits)

    p_train, p_val = class_probs(x_train), class_probs(x_val)
    history = {
        "accuracy": [float((p_train.argmax(1) == y_train).mean())], "loss": [_nll(p_train, y_train)],
        "val_accuracy": [float((p_val.argmax(1) == y_val).mean())], "val_loss": [_nll(p_val, y_val)],
    }
    return history, fit, (found.images if outliers is not None else None)


def _predict_rows(model, paths, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities and the labels of every row of ``paths`` (inference mode)."""
    labels = read_column(paths, "labels")
    probs = [np.asarray(model(read_rows(paths, np.arange(i, min(len(labels), i + batch_size))), training=False))
             for i in range(0, len(labels), batch_size)]
    return np.concatenate(probs).astype(np.float64), labels


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


def precision_policy(setting: str, capabilities: Sequence[tuple[int, int] | None]) -> str:
    """The Keras dtype policy for ``setting`` on GPUs of these compute capabilities.

    bf16 keeps fp32's range (no loss scaling) and runs at fp16's speed on Ampere (8.0) and
    later; older GPUs get fp16 with Keras' loss scaling. No GPU: float32 unless 'on'.
    """
    if setting == "off" or (setting == "auto" and not capabilities):
        return "float32"
    if all(cc is not None and cc >= (8, 0) for cc in capabilities):
        return "mixed_bfloat16"
    return "mixed_float16"


def gpus() -> list[tuple[str, tuple[int, int] | None]]:
    """(name, compute capability) of every GPU the Keras backend sees.

    Raises:
        ConfigError: a backend this trainer does not drive.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        found = []
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            found.append((gpu.name, tuple(cc) if cc else None))
        return found
    if backend == "jax":
        import jax

        return [(str(d), _capability(getattr(d, "compute_capability", None)))
                for d in jax.devices() if d.platform == "gpu"]
    raise ConfigError(f"KERAS_BACKEND={backend!r}: train_model runs on 'tensorflow' or 'jax'")


def _capability(text: str | None) -> tuple[int, int] | None:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


@contextmanager
def _distributed(n_gpus: int) -> Iterator[None]:
    """Build, compile and fit inside: data-parallel over ``n_gpus`` when there are several."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy() if n_gpus > 1 else tf.distribute.get_strategy()
        with strategy.scope():
            yield
        return
    if n_gpus <= 1:
        yield
        return
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    try:
        yield
    finally:
        keras.distribution.set_distribution(None)


def _loaders(train_paths, val_paths, cfg: TrainConfig, num_classes: int):
    """(train, val) batches with one-hot labels: tf.data on TensorFlow, a PyDataset elsewhere."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def one_hot(images, labels):
            return images, tf.one_hot(labels, num_classes)

        return (make_dataset(train_paths, cfg.batch_size, shuffle=True, seed=cfg.seed).map(one_hot),
                make_dataset(val_paths, cfg.batch_size, shuffle=False).map(one_hot))
    return (pydataset(train_paths, cfg.batch_size, shuffle=True, seed=cfg.seed, one_hot=num_classes),
            pydataset(val_paths, cfg.batch_size, shuffle=False, one_hot=num_classes))


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
    found = gpus()
    devices = [name for name, _ in found] or ["CPU"]
    policy = precision_policy(cfg.mixed_precision, [cc for _, cc in found])
    keras.mixed_precision.set_global_policy(policy)  # reset to float32 on the way out
    train_ds, val_ds = _loaders(train_paths, val_paths, cfg, num_classes)
    steps = int(np.ceil(info.total / cfg.batch_size))

    spec = ModelSpec(
        architecture=cfg.architecture,
        num_classes=num_classes,
        image_size=info.image_size,
        init_weights=fetch_weights(cfg.init_weights, out_dir),
        augment=cfg.augment and not cfg.frozen_backbone,
        # outlier exposure: one more output, "not a class" (clazzify.core.ood), which reads
        # the taps as well: 94.6% caught at 2% false flags instead of 88.1%
        num_outputs=num_classes + 1 if cfg.outlier_exposure else None,
        taps=cfg.outlier_exposure,
    )
    with ExitStack() as stack:
        stack.callback(keras.mixed_precision.set_global_policy, "float32")
        stack.enter_context(_distributed(len(found)))
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

        run = None
        if tracking:
            import mlflow  # only when tracking: the GPU benchmark machine has no MLflow

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
            ood_rule = None
            outlier_images = None
            if cfg.frozen_backbone:
                history, fit, outlier_images = _train_head(model, spec, cfg, train_paths, val_paths, num_classes)
                temperature = fit.temperature  # already folded into the kernel
                ood_rule = OodRule(fit.method, fit.threshold, cfg.ood_false_flag_rate, fit.measured)
            else:
                weights = (None if cfg.class_weighting == "none"
                           else class_weights(list(counts.values()), cfg.class_weighting))
                fit = model.fit(
                    train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, verbose=verbose,
                    class_weight=weights,
                    shuffle=False,  # the loaders plan each epoch's order themselves
                )
                history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
                if best_path.is_file():
                    model.load_weights(best_path)
            if not cfg.frozen_backbone:
                temperature = 1.0
                val_probs, val_labels = _predict_rows(model, val_paths, cfg.batch_size)
                if cfg.calibrate:
                    temperature = fit_temperature(val_probs, val_labels)
                    fold_temperature(model, temperature)
                    val_probs = apply_temperature(val_probs, temperature)
                # The training-free unknown rule: the maximum softmax probability on val.
                scores = val_probs.max(axis=1)
                ood_rule = OodRule("msp", threshold_at_false_flag_rate(scores, cfg.ood_false_flag_rate),
                                   cfg.ood_false_flag_rate,
                                   {"false_flag_rate": cfg.ood_false_flag_rate, "val_photos": len(scores)})
            seconds = time.perf_counter() - start
            val_acc = history.get("val_accuracy", [0.0])
            best_epoch = int(np.argmax(val_acc))
            meta = BundleMeta(
                class_names=class_names,
                image_size=info.image_size,
                architecture=cfg.architecture,
                fingerprint=fingerprint,
                code_version=clazzify.__version__,
                temperature=temperature,
                ood=ood_rule.to_dict(),
            )
            keras.mixed_precision.set_global_policy("float32")
            bundle_dir = export_bundle(model, meta, out_dir / "bundle", onnx=cfg.onnx,
                                       int8_data=(train_paths, val_paths), int8_outliers=outlier_images)
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
                temperature=temperature,
                ood=ood_rule.to_dict(),
            )
            if run:
                mlflow.log_metrics({"best_val_accuracy": result.best_val_accuracy, "temperature": temperature,
                                    "train_seconds": seconds, "epochs_run": result.epochs_run})
                mlflow.log_artifact(str(curve), "plots")
                mlflow.log_dict(ood_rule.to_dict(), "ood_rule.json")
                mlflow.log_metric("ood_threshold", ood_rule.threshold)
                result.run_id = run.info.run_id
            return result
        finally:
            if run:
                import mlflow

                mlflow.end_run()
