"""init_weights from a file: weights made in the test round-trip into a new model."""

import numpy as np
import pytest

from clazzify.core.errors import ConfigError
from clazzify.training.models import ModelSpec, build_model

pytestmark = pytest.mark.unit


def all_weights(model):
    return [np.asarray(w) for w in model.get_layer("core").get_weights()]


def test_clazzify_weights_round_trip(tmp_path):
    a = build_model(ModelSpec("compact", num_classes=4, image_size=32))
    path = tmp_path / "earlier.weights.h5"
    a.save_weights(path)
    b = build_model(ModelSpec("compact", num_classes=4, image_size=32, init_weights=str(path)))
    fresh = build_model(ModelSpec("compact", num_classes=4, image_size=32))
    for wa, wb in zip(all_weights(a), all_weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wf) for wa, wf in zip(all_weights(a), all_weights(fresh), strict=True))


def test_backbone_weights_file_loads_into_the_backbone(tmp_path):
    import keras

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    base.save_weights(path)
    model = build_model(ModelSpec("mobilenet_v2", num_classes=3, image_size=32, init_weights=str(path)))
    backbone = next(layer for layer in model.get_layer("core").layers if isinstance(layer, keras.Model))
    for w_base, w_loaded in zip(base.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(w_base, w_loaded)


def test_missing_or_wrong_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_model(ModelSpec("compact", 4, 32, init_weights=str(tmp_path / "nope.weights.h5")))
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match="cannot load init_weights"):
        build_model(ModelSpec("compact", 4, 32, init_weights=str(bad)))
