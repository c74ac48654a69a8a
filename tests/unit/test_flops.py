"""FLOPs counted from layer shapes: exact on single layers, within 10% of the published
multiply-accumulate counts of AlexNet, ResNet50 and MobileNetV2."""

import pytest

from clazzify.training.flops import forward_macs

pytestmark = pytest.mark.unit


def one_layer(layer, shape):
    import keras

    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def test_each_layer_kind_counts_exactly():
    from keras import layers

    assert forward_macs(one_layer(layers.Conv2D(16, 3, padding="same"), (10, 10, 8))) == 10 * 10 * 9 * 8 * 16
    assert forward_macs(one_layer(layers.Conv2D(16, 3, strides=2, groups=2), (11, 11, 8))) == 5 * 5 * 9 * 4 * 16
    assert forward_macs(one_layer(layers.DepthwiseConv2D(3, padding="same"), (10, 10, 8))) == 10 * 10 * 9 * 8
    assert forward_macs(one_layer(layers.SeparableConv2D(16, 3, padding="same"), (10, 10, 8))) == (
        10 * 10 * 9 * 8 + 10 * 10 * 8 * 16)
    assert forward_macs(one_layer(layers.Dense(7), (5,))) == 35
    assert forward_macs(one_layer(layers.BatchNormalization(), (10, 10, 8))) == 0


def paper_alexnet():
    """Krizhevsky et al. 2012 at 227 px, with its two-way grouped convolutions."""
    import keras
    from keras import layers

    x = inputs = keras.Input((227, 227, 3))
    for filters, kernel, stride, groups, pool in ((96, 11, 4, 1, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False),
                                                  (384, 3, 1, 2, False), (256, 3, 1, 2, True)):
        x = layers.Conv2D(filters, kernel, strides=stride, groups=groups, activation="relu",
                          padding="valid" if stride > 1 else "same")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2)(x)
    x = layers.Flatten()(x)
    for units in (4096, 4096, 1000):
        x = layers.Dense(units)(x)
    return keras.Model(inputs, x)


@pytest.mark.slow
def test_published_counts_within_ten_percent():
    import keras

    apps = keras.applications
    got = {
        "alexnet": forward_macs(paper_alexnet()),
        "resnet50": forward_macs(apps.ResNet50(weights=None, input_shape=(224, 224, 3))),
        "mobilenet_v2": forward_macs(apps.MobileNetV2(weights=None, input_shape=(224, 224, 3))),
    }
    published = {"alexnet": 0.72e9, "resnet50": 4.1e9, "mobilenet_v2": 0.30e9}
    for name, macs in got.items():
        assert abs(macs / published[name] - 1) <= 0.10, f"{name}: {macs / 1e9:.3f} GMAC"


@pytest.mark.slow  # builds MobileNetV2
def test_the_projects_models_are_counted_through_their_nested_backbone():
    from clazzify.training.models import ModelSpec, build_model

    model = build_model(ModelSpec("mobilenet_v2", num_classes=4, image_size=64))
    macs = forward_macs(model)
    # MobileNetV2's 300 M MACs at 224 scale with the pixel count; the head is 1280 x 4
    assert 0.9 * 0.3e9 * (64 / 224) ** 2 < macs < 1.1 * 0.3e9 * (64 / 224) ** 2
