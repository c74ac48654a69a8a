"""Online augmentation that XLA can compile, under TensorFlow and JAX.

Keras' ``RandomRotation`` and ``RandomZoom`` set ``supports_jit = False`` (on TensorFlow they
run ``ImageProjectiveTransformV3``, which has no XLA kernel), and one such layer turns XLA
off for the whole model: Keras then trains op by op, 40x slower for AlexNet on a GPU.
:class:`RandomRotateZoom` does both in one affine resampling written with ``keras.ops``
only (a gather and a bilinear blend with static shapes), so the model compiles.
"""

from __future__ import annotations

import math

import keras
from keras import ops

#: Strength of the default augmentation: the same as the Keras layers it replaces
#: (``RandomRotation(0.05)``, ``RandomZoom((-0.15, 0.0))``, ``RandomContrast(0.2)``).
ROTATION = 0.05  # fraction of a full turn: +-18 degrees
ZOOM = (-0.15, 0.0)  # 1 + U(lo, hi) of the side is sampled: zoom in by up to 15%
CONTRAST = 0.2


def _reflect(index, size: int):
    """Reflect integer pixel indices into ``[0, size)``, as ``fill_mode='reflect'``
    (d c b a | a b c d | d c b a)."""
    period = 2 * size
    m = ops.mod(index, period)
    return ops.where(m < size, m, period - 1 - m)


def rotate_zoom(images, angle, scale):
    """Resample each image of ``[B, H, W, C]`` rotated by ``angle[b]`` radians about its
    centre and zoomed by ``1 / scale[b]`` (``scale < 1`` zooms in): output pixel ``p`` takes
    the input at ``centre + scale * R(angle) (p - centre)``, bilinear, borders reflected.
    Static shapes and ``keras.ops`` only, so XLA compiles it."""
    height, width = int(images.shape[1]), int(images.shape[2])
    angle = ops.reshape(ops.cast(angle, "float32"), (-1, 1, 1))
    scale = ops.reshape(ops.cast(scale, "float32"), (-1, 1, 1))
    cy, cx = (height - 1) / 2, (width - 1) / 2
    yy, xx = ops.meshgrid(
        ops.arange(height, dtype="float32") - cy, ops.arange(width, dtype="float32") - cx, indexing="ij"
    )
    cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
    src_y = cy + cos * yy[None] + sin * xx[None]
    src_x = cx - sin * yy[None] + cos * xx[None]
    return ops.cast(_bilinear(ops.cast(images, "float32"), src_y, src_x), images.dtype)


def _bilinear(images, src_y, src_x):
    """Sample ``images`` at float coordinates ``[B, H, W]``: four gathers and a blend."""
    batch = ops.shape(images)[0]
    height, width, channels = (int(d) for d in images.shape[1:])
    y0, x0 = ops.floor(src_y), ops.floor(src_x)
    wy, wx = ops.reshape(src_y - y0, (-1, 1)), ops.reshape(src_x - x0, (-1, 1))  # per gathered pixel
    y0, x0 = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    flat = ops.reshape(images, (-1, channels))
    base = (ops.arange(batch, dtype="int32") * (height * width))[:, None, None]

    def at(y, x):
        index = base + _reflect(y, height) * width + _reflect(x, width)
        return ops.take(flat, ops.reshape(index, (-1,)), axis=0)

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return ops.reshape(top * (1 - wy) + bottom * wy, (batch, height, width, channels))


@keras.saving.register_keras_serializable(package="clazzify")
class RandomRotateZoom(keras.layers.Layer):
    """Rotate about the centre by ``U(-rotation, rotation)`` turns and zoom by ``1 + U(*zoom)``,
    one bilinear resampling per image with reflected borders; the identity at inference.

    The same sampling as ``RandomRotation(rotation, fill_mode='reflect')`` followed by
    ``RandomZoom(zoom, fill_mode='reflect')``, with one interpolation instead of two.
    Channels-last images ``[B, H, W, C]`` of any float dtype.
    """

    def __init__(self, rotation: float = ROTATION, zoom: tuple[float, float] = ZOOM, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rotation <= 0.5:
            raise ValueError(f"rotation must be a fraction of a turn in [0, 0.5], got {rotation}")
        lo, hi = zoom
        if not -1 < lo <= hi:
            raise ValueError(f"zoom must be (lo, hi) with -1 < lo <= hi, got {zoom}")
        self.rotation, self.zoom, self.seed = float(rotation), (float(lo), float(hi)), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        batch = ops.shape(images)[0]
        angle = keras.random.uniform((batch,), -self.rotation, self.rotation, seed=self.seed_generator)
        scale = 1.0 + keras.random.uniform((batch,), *self.zoom, seed=self.seed_generator)
        return rotate_zoom(images, angle * (2 * math.pi), scale)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rotation": self.rotation, "zoom": list(self.zoom), "seed": self.seed}


def augmentation() -> keras.Sequential:
    """The training-only block: horizontal flip, rotation + zoom, contrast. Every layer
    supports XLA (``supports_jit``), so a model holding it compiles whole."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            RandomRotateZoom(ROTATION, ZOOM),
            keras.layers.RandomContrast(CONTRAST),
        ],
        name="augment",
    )
