"""Thumbnails: read through :mod:`clazzify.core.storage`, resized on the server, cached on disk.

The URI always comes from the database (see :func:`clazzify.review.queues.uri_of`), never
from the request, so the app cannot be made to read an arbitrary path or bucket.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from clazzify.core import storage
from clazzify.core.imaging import ImageLimits, decode_image

#: Thumbnails accept small images too (the model rejects under 32 px; a moderator still looks).
_LIMITS = ImageLimits(min_side=1)


def make_thumbnail(data: bytes, size: int, quality: int = 80) -> bytes:
    """Encoded image -> a JPEG whose longer side is at most ``size`` px, upright.

    Raises:
        clazzify.core.errors.ImageError: the bytes are not a readable image.
    """
    img = decode_image(data, _LIMITS, draft_size=size)
    img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, optimize=False, progressive=False)
    return out.getvalue()


class ThumbnailCache:
    """JPEG thumbnails by (URI, size) in a folder; a miss reads and resizes the original."""

    def __init__(self, folder: Path, size: int = 256) -> None:
        self.folder = Path(folder)
        self.size = size

    def path_for(self, uri: str) -> Path:
        digest = hashlib.sha256(f"{self.size}\0{uri}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.jpg"

    def get(self, uri: str) -> bytes:
        """The thumbnail of ``uri``, from the cache or made now.

        Raises:
            clazzify.core.errors.StorageError: the original cannot be read.
            clazzify.core.errors.ImageError: it is not a readable image.
        """
        path = self.path_for(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = make_thumbnail(storage.read_bytes(uri), self.size)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a concurrent reader sees the whole file or none.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return data
