"""Model architectures. Every model takes raw uint8 RGB ``[B, S, S, 3]``.

Normalisation and online augmentation live inside the model, so the saved
model (Keras or ONNX) can be fed the very arrays the HDF5 files store, and
serving cannot drift from training. Only ``keras.layers``/``keras.ops`` are
used, so the same code builds under the TensorFlow, JAX or PyTorch backends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clazzify.core.errors import ConfigError

ARCHITECTURES = ("alexnet", "compact", "mobilenet_v2", "efficientnet_b0", "resnet50", "efficientnet_lite0")
_APPLICATIONS = {"mobilenet_v2", "efficientnet_b0", "resnet50"}
#: Architectures whose ImageNet weights ship in a package dependency (no network needed).
PACKAGED = {"efficientnet_lite0"}
#: The default input side: the default recipe's (EfficientNet-Lite0 at 224 px). Every entry
#: point reads it from here: ModelSpec, PreprocessConfig, ``clazzify preprocess``, the pipeline.
DEFAULT_IMAGE_SIZE = 224
# Keras' default 0.99 leaves the moving statistics far off after the few hundred
# steps a small dataset gives; 0.9 converges within tens of steps.
_BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class ModelSpec:
    """What to build.

    Attributes:
        architecture: one of :data:`ARCHITECTURES`.
        num_classes: size of the softmax.
        image_size: side of the square uint8 input.
        init_weights: ``None`` (from scratch), ``"packaged"`` (ImageNet weights from a
            package dependency, offline: efficientnet_lite0), ``"imagenet"`` (keras.applications,
            needs network access) or a local weights file (see :func:`load_init_weights`).
        augment: add online augmentation layers (active in training only).
        dropout: dropout before the classifier.
        num_outputs: width of the softmax when it is not ``num_classes``: one more for a
            model trained with a "not a class" output (:mod:`clazzify.core.ood`).
        taps: efficientnet_lite0 also hands the classifier the mean and variance per
            channel of three inner blocks (:data:`clazzify.training.lite0.TAPS`). With a
            "not a class" output they tell such photos apart better; without one they do not
            help (benchmarks/README.md, "Unknown uploads"). Other architectures ignore it.
    """

    architecture: str = "alexnet"
    num_classes: int = 4
    image_size: int = DEFAULT_IMAGE_SIZE
    init_weights: str | None = None
    augment: bool = True
    dropout: float = 0.3
    num_outputs: int | None = None
    taps: bool = False

    def __post_init__(self) -> None:
        if self.num_outputs is not None and self.num_outputs < self.num_classes:
            raise ConfigError(f"num_outputs ({self.num_outputs}) must be >= num_classes ({self.num_classes})")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}"
            )
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be >= 32 for these networks, got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.init_weights == "imagenet" and self.architecture not in _APPLICATIONS:
            raise ConfigError(
                f"imagenet weights exist only for {sorted(_APPLICATIONS)}, not {self.architecture!r}; "
                "efficientnet_lite0 takes init_weights=packaged"
            )
        if self.init_weights == "packaged" and self.architecture not in PACKAGED:
            raise ConfigError(
                f"packaged weights exist only for {sorted(PACKAGED)}, not {self.architecture!r}"
            )


def _alexnet_features(keras, x):
    """AlexNet (Krizhevsky et al. 2012) with batch norm in place of LRN; 'same' padding
    keeps it valid down to small inputs."""
    layers = keras.layers
    for filters, kernel, stride, pool in ((96, 11, 4, True), (256, 5, 1, True)):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM)(x)
        x = layers.Activation("relu")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for filters in (384, 384, 256):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(1024, activation="relu")(x)
    return x


def _compact_features(keras, x):
    """A small separable-conv CNN: fast on CPU, the demo's default."""
    layers = keras.layers
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=_BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    for filters in (64, 128, 256):
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=_BN_MOMENTUM)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    return layers.GlobalAveragePooling2D()(x)


def _application(keras, name: str, spec: ModelSpec, x):
    apps = keras.applications
    shape = (spec.image_size, spec.image_size, 3)
    weights = "imagenet" if spec.init_weights == "imagenet" else None
    ctor: Callable = {
        "mobilenet_v2": apps.MobileNetV2,
        "efficientnet_b0": apps.EfficientNetB0,
        "resnet50": apps.ResNet50,
    }[name]
    try:
        base = ctor(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    except Exception as e:  # keras raises bare Exception/URLError when offline
        if weights:
            raise ConfigError(
                f"could not load imagenet weights for {name}: {e}. Offline? Download them once "
                "on a connected machine and pass the file as init_weights"
            ) from e
        raise
    if weights is None:
        # Trained from scratch on a small dataset, the applications' default momentum
        # (0.99-0.999) leaves the moving statistics near their initial values for
        # hundreds of steps: validation then predicts one class. Use ours.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = _BN_MOMENTUM
    return base(x)


def _lite0(keras, spec: ModelSpec, x):
    from clazzify.training.lite0 import build_lite0, load_lite0_weights

    base = build_lite0((spec.image_size, spec.image_size, 3), taps=spec.taps)
    if spec.init_weights == "packaged":
        load_lite0_weights(base)
    else:
        for layer in base.layers:  # see _application: from scratch, our momentum
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = _BN_MOMENTUM
    return base(x)


def _normalise(keras, name: str, x):
    """Map uint8 [0, 255] to what each network expects."""
    layers = keras.layers
    if name == "efficientnet_lite0":  # TF-Lite's (x - 127) / 128
        from clazzify.training.lite0 import MEAN, STD

        return layers.Rescaling(1.0 / STD, offset=-MEAN / STD, name="rescale")(x)
    if name == "efficientnet_b0":
        return layers.Rescaling(1.0, name="rescale")(x)  # EfficientNet rescales internally
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)


def build_model(spec: ModelSpec):  # -> keras.Model
    """Build an uncompiled model for ``spec``.

    The graph is ``image (uint8) -> to_float -> [augment] -> core``, where ``core``
    (normalisation, features, classifier) is a sub-model, so
    :func:`inference_model` can drop the training-only augmentation for export.

    Raises:
        ConfigError: bad spec, or weights that cannot be loaded.
    """
    import keras

    shape = (spec.image_size, spec.image_size, 3)
    core_in = keras.Input(shape, name="pixels")
    x = _normalise(keras, spec.architecture, core_in)
    if spec.architecture == "alexnet":
        x = _alexnet_features(keras, x)
    elif spec.architecture == "compact":
        x = _compact_features(keras, x)
    elif spec.architecture == "efficientnet_lite0":
        x = _lite0(keras, spec, x)
    else:
        x = _application(keras, spec.architecture, spec, x)
    if spec.dropout:
        x = keras.layers.Dropout(spec.dropout)(x)
    width = spec.num_outputs or spec.num_classes
    probs = keras.layers.Dense(width, activation="softmax", dtype="float32", name="probs")(x)
    core = keras.Model(core_in, probs, name="core")

    inputs = keras.Input(shape, dtype="uint8", name="image")
    # Rescaling casts its input, so this turns uint8 into floats in [0, 255].
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    if spec.augment:
        from clazzify.training.augment import augmentation

        x = augmentation()(x)
    model = keras.Model(inputs, core(x), name=f"clazzify_{spec.architecture}")
    if spec.init_weights and spec.init_weights not in ("imagenet", "packaged"):
        load_init_weights(model, spec.init_weights)
    return model


def tap_start(spec: ModelSpec) -> int | None:
    """The first column of the classifier's input that comes from the taps (see
    :class:`ModelSpec`), or None when the model has none."""
    if spec.architecture == "efficientnet_lite0" and spec.taps:
        from clazzify.training.lite0 import FEATURES

        return FEATURES
    return None


def feature_model(model):  # -> keras.Model
    """The part of ``model``'s core below the classifier: float pixels in ``[0, 255]`` in,
    the features the ``probs`` layer reads out (same layers, shared weights)."""
    import keras

    core = model.get_layer("core")
    return keras.Model(core.input, core.get_layer("probs").input, name="features")


def load_init_weights(model, path: str) -> None:
    """Load a local weights file for transfer learning.

    Tries the keras.applications backbone first (an ImageNet ``*_no_top.h5`` file that
    a cluster user downloaded once), then the whole model (a ``.weights.h5`` of an
    earlier clazzify model; layers whose shapes differ, like a classifier with another
    number of classes, are skipped).

    Raises:
        ConfigError: the file is missing or fits neither.
    """
    import keras

    if not Path(path).is_file():
        raise ConfigError(f"init_weights file {path!r} does not exist: give a local path or an s3:// URI")
    backbones = [layer for layer in model.get_layer("core").layers if isinstance(layer, keras.Model)]
    errors = []
    for target, kwargs in [(b, {}) for b in backbones] + [(model, {"skip_mismatch": True})]:
        try:
            target.load_weights(path, **kwargs)
            return
        except (OSError, ValueError, KeyError) as e:
            errors.append(f"{target.name}: {e}")
    raise ConfigError(f"cannot load init_weights {path!r}: " + "; ".join(errors))


def inference_model(model):  # -> keras.Model
    """The same weights without the augmentation layers: uint8 in, probabilities out.

    Random layers are identities at inference, but exporters (ONNX) still trace
    their ops, so export uses this twin.
    """
    import keras

    inputs = keras.Input(model.input.shape[1:], dtype="uint8", name="image")
    x = model.get_layer("to_float")(inputs)
    twin = keras.Model(inputs, model.get_layer("core")(x), name=model.name)
    if not any(isinstance(layer, keras.layers.Normalization) for layer in twin._flatten_layers()):
        return twin
    return keras.models.clone_model(twin, clone_function=_fold_normalization, recursive=True)


def _fold_normalization(layer):  # -> keras.Layer
    """A ``Normalization`` layer as the equivalent per-channel ``Rescaling``; any other layer
    itself (shared, weights and all).

    Keras keeps a Normalization's mean and variance as eager tensors, which the ONNX
    converter leaves as extra graph inputs (EfficientNet has one), so ONNX Runtime cannot
    run the model on images alone; a Rescaling's constants are traced into the graph.
    """
    import keras

    if not isinstance(layer, keras.layers.Normalization):
        return layer
    mean = np.asarray(layer.mean, dtype=np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(layer.variance, dtype=np.float64).reshape(-1)), keras.config.epsilon())
    return keras.layers.Rescaling(scale=(1 / std).tolist(), offset=(-mean / std).tolist(), name=layer.name)
