"""Behaviour tests of the default recipe (frozen EfficientNet-Lite0, packaged weights,
calibrated head) on photos the tests draw themselves.

- Invariance: the predicted class does not change when the same photo arrives as a phone
  stores it (pixels rotated, an EXIF orientation tag to put them upright), re-encoded as a
  JPEG at quality 30, in greyscale, or downscaled to 160 px. The phone's copy holds the very
  same picture, so its probabilities must not move either (the synthetic classes look alike
  turned on their side, so a decoder that ignored the tag kept every class but moved the
  probabilities by up to 0.39).
- Directional: a blank image (no content at all) is never confidently any class: its top
  probability stays below an absolute bound and below every real photo's.

Run them with ``pytest -m model`` (``--model-uri`` tests a registered or exported model
instead of the one the session trains).
"""

from __future__ import annotations

import numpy as np
import pytest
from model_tier import ModelUnderTest, encode
from PIL import Image, ImageOps

pytestmark = [pytest.mark.model, pytest.mark.slow]

#: A blank image's top probability stays below this: with four classes a calibrated model
#: that sees nothing should be near 0.25, and "confident" starts well above a coin toss.
BLANK_MAX_PROB = 0.8
#: The same picture stored rotated with its EXIF tag: its probabilities move by at most this
#: (only JPEG's blocks fall differently; measured 0.005).
SAME_PICTURE_MAX_SHIFT = 0.05
#: The model must get at least this share of the clean held-out photos right, or the
#: invariance tests would be testing a model that knows nothing.
MIN_CLEAN_ACCURACY = 0.9
#: EXIF orientation 6: the camera held upright, the pixels stored rotated; a viewer (and the
#: decode path) turns them by 270 degrees, so storing the photo turned by 90 shows it upright.
ORIENTATION = 0x0112


def as_a_phone_stores_it(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return encode(img.transpose(Image.Transpose.ROTATE_90), exif=exif)


def downscaled(img: Image.Image, side: int = 160) -> bytes:
    scale = side / max(img.size)
    return encode(img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS))


VARIANTS = {
    "exif_orientation": as_a_phone_stores_it,
    "jpeg_quality_30": lambda img: encode(img, quality=30),
    "greyscale": lambda img: encode(ImageOps.grayscale(img)),
    "downscale_160px": downscaled,
}


def top_classes(model: ModelUnderTest, encoded: list[bytes]) -> list[str]:
    return [model.class_names[i] for i in model.predict(encoded).argmax(axis=1)]


@pytest.fixture(scope="module")
def clean_probs(model: ModelUnderTest, photos) -> np.ndarray:
    return model.predict([encode(img) for _, img in photos])


@pytest.fixture(scope="module")
def clean(model: ModelUnderTest, clean_probs: np.ndarray) -> list[str]:
    return [model.class_names[i] for i in clean_probs.argmax(axis=1)]


def test_the_model_knows_the_clean_photos(clean: list[str], photos):
    right = [pred == label for pred, (label, _) in zip(clean, photos, strict=True)]
    assert np.mean(right) >= MIN_CLEAN_ACCURACY, list(zip(clean, [label for label, _ in photos], strict=True))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_predicted_class_survives(model: ModelUnderTest, photos, clean: list[str], variant: str):
    changed = [
        (label, before, after)
        for (label, _), before, after in zip(
            photos, clean, top_classes(model, [VARIANTS[variant](img) for _, img in photos]), strict=True)
        if before != after
    ]
    assert not changed, f"{variant} changed {len(changed)} of {len(photos)} (label, before, after): {changed}"


def test_the_phones_copy_is_the_same_picture(model: ModelUnderTest, photos, clean_probs: np.ndarray):
    shifted = np.abs(model.predict([as_a_phone_stores_it(img) for _, img in photos]) - clean_probs).max(axis=1)
    worst = int(shifted.argmax())
    assert shifted[worst] <= SAME_PICTURE_MAX_SHIFT, (
        f"an EXIF-rotated copy of a {photos[worst][0]} photo moved a probability by {shifted[worst]:.3f}: "
        "is the orientation tag applied before the model sees the pixels?")


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (128, 128, 128), (230, 220, 200)])
def test_a_blank_image_is_never_confidently_a_class(model: ModelUnderTest, clean_probs: np.ndarray, colour):
    probs = model.predict([encode(Image.new("RGB", (320, 240), colour))])[0]
    top = int(probs.argmax())
    assert probs[top] < BLANK_MAX_PROB, f"blank {colour} is {model.class_names[top]!r} at {probs[top]:.3f}"
    least_sure = float(clean_probs.max(axis=1).min())
    assert probs[top] < least_sure, (
        f"blank {colour} ({model.class_names[top]!r} at {probs[top]:.3f}) is surer than a real photo "
        f"({least_sure:.3f})")
