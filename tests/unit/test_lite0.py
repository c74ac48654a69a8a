"""EfficientNet-Lite0 in Keras with the packaged ImageNet weights."""

from pathlib import Path

import numpy as np
import pytest

from clazzify.core.errors import ConfigError
from clazzify.training.lite0 import MEAN, STD, build_lite0, load_lite0_weights
from clazzify.training.models import ModelSpec

pytestmark = pytest.mark.unit

SAMPLE = "ambiance/imagenetsample__n04081281_restaurant.JPEG"
SHARED = [Path(__file__).resolve().parents[3] / "shared/datasets/restaurant-photos",
          Path("/work/shared/datasets/restaurant-photos")]
RESTAURANT = 762  # ImageNet class "restaurant, eating house, eating place, eatery"


def _stripes_and_checks(n: int, size: int, seed: int = 0):
    """Four texture classes (stripes, checks, rings, blocks) in random colours, angles and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images, labels = [], []
    for i in range(n):
        c, f, ph, a = i % 4, rng.uniform(3, 6), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
        if c == 0:
            m = np.sin(2 * np.pi * f * u + ph) > 0
        elif c == 1:
            m = (np.sin(2 * np.pi * f * u + ph) > 0) ^ (np.sin(2 * np.pi * f * v) > 0)
        elif c == 2:
            m = np.sin(2 * np.pi * f * np.hypot(xx - rng.uniform(0.3, 0.7), yy - rng.uniform(0.3, 0.7)) + ph) > 0
        else:
            m = (rng.random((size // 8, size // 8)) > 0.5).repeat(8, 0).repeat(8, 1)
        img = np.where(m[..., None], rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))
        img += rng.normal(0, 20, (size, size, 3))
        images.append(np.clip(img, 0, 255))
        labels.append(c)
    return (np.array(images, np.float32) - MEAN) / STD, np.array(labels)


def test_lite0_has_the_reference_size_and_takes_the_packaged_weights():
    model = build_lite0((32, 32, 3), include_top=True)
    assert model.count_params() == 4_694_024  # the state dict's parameter count
    assert load_lite0_weights(model) == 99  # 16 blocks' convs and norms, stem, head, fc
    assert model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).shape == (1, 1000)


def test_packaged_weights_only_for_lite0():
    with pytest.raises(ConfigError, match="packaged weights exist only"):
        ModelSpec("mobilenet_v2", 4, 64, init_weights="packaged")
    with pytest.raises(ConfigError, match="efficientnet_lite0 takes init_weights=packaged"):
        ModelSpec("efficientnet_lite0", 4, 64, init_weights="imagenet")


@pytest.mark.slow
def test_pretrained_features_separate_classes_far_better_than_random_weights():
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x, y = _stripes_and_checks(64, 64)
    scores = {}
    for pretrained in (False, True):
        keras.utils.set_random_seed(0)
        model = build_lite0((64, 64, 3))
        if pretrained:
            load_lite0_weights(model)
        features = model.predict(x, verbose=0)
        scores[pretrained] = cross_val_score(LogisticRegression(max_iter=2000), features, y, cv=4).mean()
    assert scores[True] >= 0.85, scores
    assert scores[True] - scores[False] >= 0.4, scores


@pytest.mark.slow
def test_imagenet_sample_photo_is_a_restaurant():
    photo = next((p / SAMPLE for p in SHARED if (p / SAMPLE).is_file()), None)
    if photo is None:
        pytest.skip("the shared photos (../shared/datasets/restaurant-photos) are not here")
    from clazzify.core.imaging import decode_image, fit_square

    pixels = fit_square(decode_image(photo.read_bytes()), 224).astype(np.float32)
    model = build_lite0((224, 224, 3), include_top=True)
    load_lite0_weights(model)
    logits = model.predict(((pixels - MEAN) / STD)[None], verbose=0)[0]
    assert RESTAURANT in np.argsort(-logits)[:5]


def _conv_reference(x, w_oihw, stride, groups=1):
    """PyTorch-semantics convolution (OIHW weights) with TensorFlow "same" padding, in numpy."""
    n, h, wd, c = x.shape
    o, i, k, _ = w_oihw.shape
    out_h, out_w = -(-h // stride), -(-wd // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - wd, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((n, out_h, out_w, o), np.float64)
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        ins = slice(g * i, (g + 1) * i)
        for dy in range(k):
            for dx in range(k):
                patch = xp[:, dy:dy + stride * out_h:stride, dx:dx + stride * out_w:stride, ins]
                out[..., oc] += patch @ w_oihw[oc, :, dy, dx]
    return out


def test_stem_and_first_depthwise_match_a_numpy_reference_of_the_state_dict():
    """The weight mapping (OIHW -> HWIO, depthwise, batch-norm order and epsilon) and the
    padding, checked against the state dict itself, with no photos needed."""
    import keras

    from clazzify.training.lite0 import BN_EPSILON, packaged_weights_path
    from clazzify.training.torch_weights import read_state_dict

    sd = read_state_dict(packaged_weights_path())
    model = build_lite0((17, 17, 3))  # odd size: asymmetric "same" padding at stride 2
    load_lite0_weights(model, sd)
    x = np.random.default_rng(0).normal(0, 1, (2, 17, 17, 3)).astype(np.float32)
    outputs = [model.get_layer("bn0_relu6").output, model.get_layer("blocks_0_bn1_relu6").output]
    probe = keras.Model(model.input, outputs)
    stem, dw = (np.asarray(t, np.float64) for t in probe.predict(x, verbose=0))

    def bn(y, prefix):
        g, b, m, v = (sd[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
        return (y - m) / np.sqrt(v + BN_EPSILON) * g + b

    ref_stem = np.clip(bn(_conv_reference(x.astype(np.float64), sd["_conv_stem.weight"], 2), "_bn0"), 0, 6)
    np.testing.assert_allclose(stem, ref_stem, atol=1e-4)
    w = sd["_blocks.0._depthwise_conv.weight"]
    ref_dw = np.clip(bn(_conv_reference(ref_stem, w, 1, groups=w.shape[0]), "_blocks.0._bn1"), 0, 6)
    np.testing.assert_allclose(dw, ref_dw, atol=1e-3)


def test_taps_append_each_blocks_mean_and_variance_to_the_same_pooled_features():
    import keras

    from clazzify.training.lite0 import FEATURES, TAP_FEATURES, TAPS

    plain, tapped = build_lite0((64, 64, 3)), build_lite0((64, 64, 3), taps=True)
    load_lite0_weights(plain)
    load_lite0_weights(tapped)
    x = np.random.default_rng(0).normal(0, 1, (3, 64, 64, 3)).astype(np.float32)
    out = np.asarray(tapped.predict(x, verbose=0))
    assert out.shape == (3, FEATURES + TAP_FEATURES)
    np.testing.assert_allclose(out[:, :FEATURES], plain.predict(x, verbose=0), atol=1e-5)
    col = FEATURES
    for name, channels in TAPS:  # mean then variance over the image, per channel, block by block
        block = np.asarray(keras.Model(tapped.input, tapped.get_layer(name).output).predict(x, verbose=0))
        np.testing.assert_allclose(out[:, col : col + channels], block.mean((1, 2)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out[:, col + channels : col + 2 * channels], block.var((1, 2)),
                                   rtol=1e-3, atol=1e-3)
        col += 2 * channels


def test_only_lite0_has_taps_and_only_when_asked():
    from clazzify.training.models import tap_start

    assert tap_start(ModelSpec("efficientnet_lite0", 4, 64, taps=True)) == 1280
    assert tap_start(ModelSpec("efficientnet_lite0", 4, 64)) is None  # off unless asked for
    assert tap_start(ModelSpec("compact", 4, 64, taps=True)) is None
