"""Augmentation that XLA compiles: the geometry matches Keras' own transforms, and every
architecture with augmentation passes Keras' ``model_supports_jit`` under TensorFlow (so
"Model doesn't support `jit_compile=True`" cannot come back; tests/unit/test_models.py checks JAX)."""

import math
import subprocess
import sys

import numpy as np
import pytest

from clazzify.training.augment import RandomRotateZoom, rotate_zoom
from clazzify.training.models import ARCHITECTURES, ModelSpec, build_model, inference_model

pytestmark = pytest.mark.unit


def images(n=2, size=9):
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def keras_affine(img, matrix):
    import keras

    return np.asarray(keras.ops.image.affine_transform(
        img, np.array([matrix] * len(img), "float32"), interpolation="bilinear", fill_mode="reflect"))


def test_identity_and_a_quarter_turn_are_exact():
    img = images()
    np.testing.assert_array_equal(np.asarray(rotate_zoom(img, np.zeros(2), np.ones(2))), img)
    quarter = np.asarray(rotate_zoom(img, np.full(2, math.pi / 2), np.ones(2)))
    np.testing.assert_allclose(quarter, np.rot90(img, 1, axes=(1, 2)), atol=1e-3)


@pytest.mark.parametrize(("angle", "scale"), [(0.0, 0.8), (0.3, 1.0), (-0.2, 0.85)])
def test_same_pixels_as_keras_affine_transform_with_reflect(angle, scale):
    """What RandomRotation + RandomZoom (fill_mode='reflect') sample, from one resampling."""
    img, c = images(), 4.0
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # Keras' matrix maps output (x, y) to input (a0 x + a1 y + a2, b0 x + b1 y + b2)
    matrix = [cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c, 0, 0]
    got = np.asarray(rotate_zoom(img, np.full(2, angle), np.full(2, scale)))
    np.testing.assert_allclose(got, keras_affine(img, matrix), atol=1e-3)


def test_layer_is_random_in_training_and_the_identity_at_inference():
    layer = RandomRotateZoom(seed=1)
    img = images(8, 16)
    np.testing.assert_array_equal(np.asarray(layer(img, training=False)), img)
    out = np.asarray(layer(img, training=True))
    assert out.shape == img.shape and not np.allclose(out, img)
    assert out.min() >= 0 and out.max() <= 255  # bilinear blends stay in range
    with pytest.raises(ValueError, match="rotation"):
        RandomRotateZoom(rotation=2.0)


@pytest.mark.slow
def test_every_architecture_compiles_whole_under_tensorflow():
    from keras.src.trainers.trainer import model_supports_jit

    for arch in ARCHITECTURES:
        model = build_model(ModelSpec(arch, num_classes=3, image_size=32, augment=True))
        assert model.get_layer("augment"), arch
        assert model_supports_jit(model), f"{arch}: a layer sets supports_jit=False"
    model = build_model(ModelSpec("compact", num_classes=3, image_size=32))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    assert model.jit_compile  # Keras would have turned it off with a warning
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    assert np.isfinite(float(model.train_on_batch(x, np.array([0, 1, 2, 0]))))  # XLA-compiled step


def test_augmentation_stays_out_of_the_inference_model():
    model = build_model(ModelSpec("compact", num_classes=3, image_size=32))
    twin = inference_model(model)
    names = {layer.name for layer in twin._flatten_layers()}
    assert "augment" not in names and not any("random" in n for n in names)


@pytest.mark.slow
def test_bundle_keras_file_loads_without_the_training_code(tiny_bundle):
    """The model server imports no training code: the saved model holds stock layers only."""
    script = (
        "import sys, keras; m = keras.models.load_model(sys.argv[1], compile=False); "
        "assert 'clazzify.training' not in ' '.join(sys.modules), 'training code imported'; "
        "print(sorted(layer.name for layer in m._flatten_layers()))"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_bundle / "model.keras")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "augment" not in proc.stdout
