"""Frozen-backbone training: class weights, the feature cache, the head, the folded temperature."""

import numpy as np
import pytest

from clazzify.core.bundle import BundleMeta, load_predictor
from clazzify.core.errors import ConfigError
from clazzify.training.calibration import apply_temperature, negative_log_likelihood
from clazzify.training.head import FeatureCache, class_weights, extract_features, fit_head, pixel_digests, softmax

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("mode", "expected"), [
    ("none", {0: 1.0, 1: 1.0, 2: 0.0}),
    ("balanced", {0: 40 / 30, 1: 40 / 90, 2: 0.0}),
    ("sqrt", {0: np.sqrt(40 / 30), 1: np.sqrt(40 / 90), 2: 0.0}),
])
def test_class_weights(mode, expected):
    got = class_weights([10, 30, 0], mode)
    assert got == pytest.approx(expected)


def test_class_weights_reject_unknown_mode():
    with pytest.raises(ConfigError, match="class_weighting must be one of"):
        class_weights([1, 2], "inverse")


def test_fit_head_separates_a_linear_toy_set():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 16))
    y = np.repeat(np.arange(3), 40)
    x = (centres[y] + rng.normal(0, 1, (120, 16))).astype(np.float32)
    kernel, bias = fit_head(x, y, 3)
    assert kernel.shape == (16, 3) and bias.shape == (3,)
    assert (softmax(x @ kernel + bias).argmax(1) == y).mean() > 0.95


class _Counting:
    """A feature "model" that counts the rows it sees."""

    def __init__(self):
        self.rows = 0

    def __call__(self, images, training=False):
        self.rows += len(images)
        return images.reshape(len(images), -1)[:, :5].astype(np.float32)


def test_column_scaling_standardises_the_tail_and_folds_back_into_the_raw_weights():
    from clazzify.training.head import ColumnScaling

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(40, 9, (50, 2)), np.full((50, 1), 7.0)], 1)
    scaling = ColumnScaling.fit(x, 3)
    z = scaling.apply(x)
    np.testing.assert_allclose(z[:, :3], x[:, :3], rtol=1e-6)  # the head's own columns untouched
    np.testing.assert_allclose(z[:, 3:5].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, 3:5].std(0), 1, atol=1e-5)
    assert (z[:, 5] == 0).all()  # a constant column carries nothing, and is not blown up
    kernel, bias = rng.normal(0, 1, (6, 4)).astype(np.float32), rng.normal(0, 1, 4).astype(np.float32)
    raw_kernel, raw_bias = scaling.fold(kernel, bias)
    np.testing.assert_allclose(x @ raw_kernel + raw_bias, z @ kernel + bias, rtol=1e-4, atol=1e-3)
    assert (ColumnScaling.fit(x, None).apply(x) == x.astype(np.float32)).all()


def test_feature_cache_computes_each_image_once(hdf5_dir, tmp_path):
    paths = [hdf5_dir / "train.h5"]
    first = _Counting()
    feats, labels = extract_features(first, paths, cache=FeatureCache(tmp_path, "k"), progress=False)
    second = _Counting()
    again, labels2 = extract_features(second, paths, cache=FeatureCache(tmp_path, "k"), progress=False)
    assert first.rows == len(labels) and second.rows == 0
    np.testing.assert_array_equal(feats, again)
    np.testing.assert_array_equal(labels, labels2)
    other = _Counting()
    extract_features(other, paths, cache=FeatureCache(tmp_path, "another-backbone"), progress=False)
    assert other.rows == len(labels)


def test_pixel_digests_tell_images_apart():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    a[1, 0, 0, 0] = 1
    d = pixel_digests(a)
    assert d[0] != d[1] and pixel_digests(a[:1]) == d[:1]


def test_fold_temperature_divides_the_logits():
    import keras

    from clazzify.training.models import ModelSpec, build_model, inference_model
    from clazzify.training.train import fold_temperature

    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec("compact", 4, 32, augment=False))
    probs = model.get_layer("core").get_layer("probs")
    kernel, bias = probs.get_weights()
    probs.set_weights([kernel * 20, bias + 1])  # confident enough that T matters
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    before = np.asarray(inference_model(model).predict(images, verbose=0))
    fold_temperature(model, 2.5)
    after = np.asarray(inference_model(model).predict(images, verbose=0))
    np.testing.assert_allclose(after, apply_temperature(before, 2.5), atol=1e-5)


def test_frozen_backbone_needs_pretrained_weights():
    from clazzify.training.train import TrainConfig

    with pytest.raises(ConfigError, match="frozen_backbone needs pretrained weights"):
        TrainConfig(architecture="efficientnet_lite0", frozen_backbone=True)


@pytest.mark.slow
def test_cli_trains_calibrates_and_records_the_temperature_of_the_default_recipe(hdf5_dir, tmp_path):
    """One training of the default recipe, through the CLI: what it prints, and the
    temperature the bundle records and applies. The one place the suite trains this recipe
    on ``hdf5_dir``: the CLI's bundle carries every check."""
    from click.testing import CliRunner

    from clazzify.cli import main
    from clazzify.training.data import read_column, read_rows

    result = CliRunner().invoke(main, [
        "train", str(hdf5_dir), "-o", str(tmp_path / "out"), "--architecture", "efficientnet_lite0",
        "--init-weights", "packaged", "--frozen-backbone", "--class-weighting", "none", "--no-track",
        "--feature-cache", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    assert "temperature" in result.output
    bundle = tmp_path / "out" / "bundle"
    meta = BundleMeta.load(bundle)
    assert meta.architecture == "efficientnet_lite0"
    assert meta.temperature != 1.0 and f"{meta.temperature:.3f}" in result.output
    assert list((tmp_path / "cache").glob("efficientnet_lite0-packaged-32.npz"))
    # The bundle's probabilities are the calibrated ones: on the validation split their NLL
    # is what temperature scaling minimised, below the uncalibrated model's.
    val = [hdf5_dir / "val.h5"]
    labels = read_column(val, "labels")
    probs = load_predictor(bundle, "onnx").predict(read_rows(val, np.arange(len(labels))))
    raw = apply_temperature(probs, 1 / meta.temperature)
    assert negative_log_likelihood(probs, labels) <= negative_log_likelihood(raw, labels) + 1e-6
    refused = CliRunner().invoke(main, ["train", str(hdf5_dir), "-o", str(tmp_path / "x"), "--frozen-backbone",
                                        "--no-track"])
    assert refused.exit_code != 0 and "frozen_backbone needs pretrained weights" in refused.output
