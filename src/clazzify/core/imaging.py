"""The one image path: decode, orient, convert to RGB, resize and crop.

The HDF5 builder, the model server and the scoring workers all call
:func:`image_to_array`, so a photo reaches the model as exactly the pixels
training stored for it.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clazzify.core.errors import ConfigError, ImageError

#: Resampling filter shared by training and serving; changing it changes the pixels.
RESAMPLE = Image.Resampling.BILINEAR

# Modes PIL decodes to that carry more than 8 bits per channel.
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


@dataclass(frozen=True)
class ImageLimits:
    """Quality limits applied to every decoded image, the same in training and serving.

    Ingest, the HDF5 builder and the model server each hold one of these (with these
    defaults), so a photo the model was trained on is never refused in production.

    Attributes:
        min_side: smallest accepted width or height in pixels.
        max_pixels: largest accepted width*height, a guard against decompression bombs.
    """

    min_side: int = 32
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ConfigError(f"min_side must be >= 1, got {self.min_side}")
        if self.max_pixels < self.min_side**2:
            raise ConfigError(
                f"max_pixels={self.max_pixels} is below min_side**2={self.min_side**2}: "
                "no image could pass; raise max_pixels or lower min_side"
            )


def content_hash(data: bytes) -> str:
    """SHA-256 of the raw bytes: the identity used for exact-duplicate removal."""
    return hashlib.sha256(data).hexdigest()


def open_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Read only the header of ``data`` and check it against ``limits`` (see :func:`decode_opened`).

    Raises:
        ImageError: empty, not an image, unreadable header, too small or too large.
    """
    if not data:
        raise ImageError("empty", "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError("not_an_image", "not a recognised image format") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_large", f"decompression-bomb guard: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError("corrupt", f"cannot read image header: {e}") from e
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageError(
            "too_large",
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={limits.max_pixels}",
        )
    if min(width, height) < limits.min_side:
        raise ImageError(
            "too_small", f"{width}x{height} is below min_side={limits.min_side} px"
        )
    return img


#: Pixels per band when a high-depth image is scaled down to 8 bits: the float64 working
#: copy is this size (2 MB), whatever the image's.
_BAND_PIXELS = 1 << 18


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """A high-depth (16/32-bit, float) image as 8-bit ``L``, scaled so its maximum is 255.

    Works band by band: the float64 arithmetic is the same per pixel as on the whole array
    (so the pixels are the same), but no full-size float64 copy is ever made; a 50 MP
    16-bit PNG costs its 8-bit result, not several 400 MB arrays.
    """
    width, height = img.size
    top = float(img.getextrema()[1]) if width * height else 0.0
    scale = 255.0 / top if top > 255 else 1.0
    out = Image.new("L", img.size)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for y in range(0, height, rows):
        band = np.asarray(img.crop((0, y, width, min(y + rows, height))), dtype=np.float64)
        out.paste(Image.fromarray(np.clip(band * scale, 0, 255).astype(np.uint8), mode="L"),
                  (0, y))
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is flattened onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes, limits: ImageLimits = ImageLimits(), *, draft_size: int | None = None
) -> Image.Image:
    """Decode ``data`` fully into an upright 8-bit RGB image.

    Args:
        data: encoded image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF...).
        limits: size limits; violations raise :class:`ImageError`.
        draft_size: when set, JPEGs are decoded with DCT scaling to the smallest
            size whose sides are both still >= ``draft_size`` (2-4x faster).

    Raises:
        ImageError: empty, not an image, truncated/corrupt, too small or too large.
    """
    return decode_opened(open_image(data, limits), draft_size)


def decode_opened(img: Image.Image, draft_size: int | None = None) -> Image.Image:
    """:func:`decode_image` of an image :func:`open_image` opened (and nothing else read)."""
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        # In place: the default returns a copy of every upright photo (6% of a server's
        # decode time, profiled), and nothing else holds this image.
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_large", f"decompression-bomb guard: {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError("corrupt", f"truncated or corrupt image data: {e}") from e


def draft_scale(img: Image.Image, draft_size: int) -> int:
    """The DCT scale (1, 2, 4 or 8) ``decode_opened(img, draft_size)`` decodes at, from the
    header alone: PIL's own choice, the largest scale that keeps both sides >= ``draft_size``
    (1 for a non-JPEG, and for a JPEG PIL cannot draft)."""
    if img.format != "JPEG" or len(img.tile) != 1 or img.decoderconfig:
        return 1
    fits = min(img.size[0] // draft_size, img.size[1] // draft_size)
    return next((scale for scale in (8, 4, 2, 1) if fits >= scale), 1)


def decoded_pixels(img: Image.Image, draft_size: int) -> int:
    """Pixels ``decode_opened(img, draft_size)`` will hold, from the header alone: a JPEG
    drafted at 1/8 counts an eighth of each side, any other image its full size."""
    scale = draft_scale(img, draft_size)
    width, height = img.size
    return -(-width // scale) * -(-height // scale)


def fit_square(img: Image.Image, image_size: int) -> np.ndarray:
    """Aspect-preserving resize plus centre crop to ``image_size`` squared, as uint8 HWC."""
    fitted = ImageOps.fit(img, (image_size, image_size), method=RESAMPLE, centering=(0.5, 0.5))
    return np.asarray(fitted, dtype=np.uint8)


def image_to_array(
    data: bytes, image_size: int, limits: ImageLimits = ImageLimits()
) -> np.ndarray:
    """Encoded bytes -> uint8 array ``[image_size, image_size, 3]``: the training/serving path."""
    if image_size < 1:
        raise ConfigError(f"image_size must be >= 1, got {image_size}")
    return opened_to_array(open_image(data, limits), image_size)


def opened_to_array(img: Image.Image, image_size: int) -> np.ndarray:
    """:func:`image_to_array` of an image :func:`open_image` opened: callers that check
    headers first (the model server's per-request pixel budget) decode with this."""
    return fit_square(decode_opened(img, draft_size=image_size), image_size)
