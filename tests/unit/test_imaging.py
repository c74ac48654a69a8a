import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from clazzify.core import imaging
from clazzify.core.errors import ConfigError, ImageError
from clazzify.core.imaging import (
    ImageLimits,
    content_hash,
    decode_image,
    decoded_pixels,
    fit_square,
    image_to_array,
    open_image,
)

pytestmark = pytest.mark.unit


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 80, h: int = 60) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None].repeat(w, 1)
    return Image.fromarray(np.concatenate([x, y, 255 - x], axis=2))


def test_exif_orientation_is_applied():
    img = gradient(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out = decode_image(encode(img, "JPEG", exif=exif))
    assert out.size == (40, 80)


@pytest.mark.parametrize(
    "mode",
    ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"],
)
def test_every_mode_becomes_8bit_rgb(mode):
    img = gradient().convert(mode) if mode != "I;16" else Image.fromarray(
        (np.arange(80 * 60).reshape(60, 80) * 13 % 65535).astype(np.uint16)
    )
    fmt = "TIFF" if mode in ("CMYK",) else "PNG"
    out = decode_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (80, 60)


def test_transparency_is_flattened_on_white():
    img = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    out = np.asarray(decode_image(encode(img)))
    assert (out == 255).all()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, not an image", "not_an_image"),
    ],
)
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageError) as err:
        decode_image(data)
    assert err.value.reason == reason


def test_truncated_jpeg_is_corrupt():
    data = encode(gradient(200, 200), "JPEG")
    with pytest.raises(ImageError) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.reason == "corrupt"


def test_limits():
    with pytest.raises(ImageError) as err:
        decode_image(encode(gradient(20, 50)), ImageLimits(min_side=32))
    assert err.value.reason == "too_small"
    with pytest.raises(ImageError) as err:
        decode_image(encode(gradient(100, 100)), ImageLimits(min_side=1, max_pixels=9999))
    assert err.value.reason == "too_large"
    with pytest.raises(ConfigError):
        ImageLimits(min_side=64, max_pixels=100)
    with pytest.raises(ConfigError, match="min_side must be >= 1"):
        ImageLimits(min_side=0)


def test_training_and_serving_apply_the_same_image_limits():
    """A photo the model was trained on is never refused by the server for its size."""
    from clazzify.serving.config import ServingLimits
    from clazzify.training.ingest import IngestConfig
    from clazzify.training.preprocess import PreprocessConfig

    assert IngestConfig().limits == PreprocessConfig().limits == ServingLimits().image_limits
    assert ServingLimits().image_limits == ImageLimits()


def test_fit_square_centre_crops():
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # red centre third
    arr = fit_square(img, 50)
    assert arr.shape == (50, 50, 3) and arr.dtype == np.uint8
    assert (arr[:, :, 0] > 200).all()  # only the red centre survives


def test_image_to_array_is_deterministic_and_sized():
    data = encode(gradient(500, 300), "JPEG")
    a, b = image_to_array(data, 64), image_to_array(data, 64)
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    assert content_hash(data) == content_hash(bytes(data)) != content_hash(data + b"x")


@pytest.mark.parametrize("w,h", [(80, 60), (300, 200), (480, 470), (600, 520), (1100, 900), (2100, 1700)])
@pytest.mark.parametrize("size", [32, 64, 227])
def test_same_draft_scale_means_same_pixels(w, h, size):
    """Ingest cuts training pixels from its validation decode only when the two draft scales
    are equal: then they must equal image_to_array's, bit for bit."""
    from clazzify.core.imaging import draft_scale, open_image

    def same_draft(data: bytes, size_a: int, size_b: int) -> bool:
        header = open_image(data)
        return draft_scale(header, size_a) == draft_scale(header, size_b)

    jpeg = encode(gradient(w, h), "JPEG", quality=90)
    png = encode(gradient(w, h))
    assert same_draft(png, 256, size)  # draft scaling is JPEG-only
    same = same_draft(jpeg, 256, size)
    cut = fit_square(decode_image(jpeg, draft_size=256), size)
    if same:
        np.testing.assert_array_equal(cut, image_to_array(jpeg, size))

    def scale(req: int) -> int:  # libjpeg's DCT scale as PIL picks it
        return next(s for s in (8, 4, 2, 1) if s <= max(1, min(w // req, h // req)))

    assert same == (scale(256) == scale(size))  # e.g. 480 px: 1 toward 256, 2 toward 227
    for progressive in (False, True):  # draft_scale reads from the header the scale PIL then decodes at
        data = encode(gradient(w, h), "JPEG", quality=90, progressive=progressive)
        img = Image.open(io.BytesIO(data))
        predicted = draft_scale(img, size)
        img.draft("RGB", (size, size))
        assert predicted == (img.decoderconfig or (1,))[0]


def test_draft_scale_of_a_truncated_jpeg_only_reads_the_header():
    from clazzify.core.imaging import draft_scale, open_image

    data = encode(gradient(200, 200), "JPEG")
    assert draft_scale(open_image(data[: len(data) // 2]), 64) in (1, 2, 4, 8)
    with pytest.raises(ImageError) as e:
        open_image(b"not an image")
    assert e.value.reason == "not_an_image"


def _old_high_depth_to_l(arr: np.ndarray) -> np.ndarray:
    """The whole-array conversion the banded one replaced (the reference for parity)."""
    wide = arr.astype(np.float64)
    top = float(wide.max()) if wide.size else 0.0
    scale = 255.0 / top if top > 255 else 1.0
    return np.clip(wide * scale, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("arr", [
    np.random.default_rng(0).integers(0, 65535, (301, 517), dtype=np.uint16),
    np.full((40, 40), 200, np.uint16),  # max <= 255: kept as is
    np.random.default_rng(1).integers(-1000, 10**7, (97, 64)).astype(np.int32),
    np.random.default_rng(2).normal(0, 1000, (50, 90)).astype(np.float32),
], ids=["I;16", "I;16-dark", "I", "F"])
def test_banded_high_depth_conversion_gives_the_whole_array_pixels(arr, monkeypatch):
    monkeypatch.setattr(imaging, "_BAND_PIXELS", 1000)  # many bands, a ragged last one
    img = Image.fromarray(arr)
    want = np.repeat(_old_high_depth_to_l(arr)[..., None], 3, axis=2)
    np.testing.assert_array_equal(np.asarray(decode_image(encode(img, "TIFF"))), want)


def test_a_16bit_image_decodes_without_full_size_float64_copies():
    # 9 MP of 16-bit grey: the whole-array conversion made three 72 MB float64 copies
    # (216 MiB); bands make three 2 MiB ones.
    img = Image.new("I;16", (3000, 3000))
    img.putpixel((10, 10), 65535)
    data = encode(img)
    tracemalloc.start()
    try:
        pixels = image_to_array(data, 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert peak < 16 * 2**20, f"numpy peak {peak / 2**20:.0f} MiB while decoding"


def test_decoded_pixels_counts_a_drafted_jpeg_at_its_dct_scale():
    jpeg = open_image(encode(gradient(1024, 768), "JPEG"))
    assert decoded_pixels(jpeg, 128) == (1024 // 4) * (768 // 4)  # 768 // 128 = 6 -> scale 4
    png = open_image(encode(gradient(1024, 768)))
    assert decoded_pixels(png, 128) == 1024 * 768
