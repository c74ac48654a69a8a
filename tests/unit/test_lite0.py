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
