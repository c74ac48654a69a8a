"""The pixel cache: the training pixels ingest's validating decode already produced.

Ingest has to decode every photo to validate and hash it. With a pixel cache it also keeps
each accepted photo's ``image_to_array(bytes, S)``, and the HDF5 step copies those pixels
instead of decoding every photo a second time: one decode pass from photos to HDF5.

A cache is a folder with one file per shard, so each preprocessing task opens only its own
shard's rows. ``<folder>/pixels-NNNNN.h5`` (shard NNNNN) holds:

    images  uint8 [N, S, S, 3], contiguous (rows read with os.preadv: no per-row HDF5 call)
    sha256  str   [N], the photo of each row ("" for a row that holds none)
    attrs   image_size, min_side, max_pixels (the limits the pixels were checked under)
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from clazzify.core.imaging import ImageLimits

_STR = h5py.string_dtype(encoding="utf-8")


def cache_file(folder: Path, shard: int) -> Path:
    """The cache file of one shard."""
    return folder / f"pixels-{shard:05d}.h5"


def cache_files(folder: Path, shard: int | None = None) -> list[Path]:
    """The cache files of ``folder`` that exist: the shard's, or every shard's."""
    found = [cache_file(folder, shard)] if shard is not None else sorted(folder.glob("pixels-[0-9]*.h5"))
    return [path for path in found if path.is_file()]


def create_images(f: h5py.File, shape: tuple[int, ...]) -> h5py.Dataset:
    """A contiguous uint8 ``images`` dataset whose space is allocated at once (so it has an
    offset to map or write at) without a fill pass: HDF5's default writes the fill value
    over the whole extent on the first write, 0.7 s for 200 MB here. Rows of quarantined
    photos are never read (their digest is empty)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return f.create_dataset("images", shape, dtype=np.uint8, dcpl=dcpl)


@dataclass(frozen=True)
class RowSink:
    """Where the rows of a contiguous ``images`` dataset go (a :class:`CacheFile`, an HDF5 split
    file), small enough to send to a worker process. A worker writes its rows' bytes at
    their place in the preallocated dataset with ``os.pwrite``, which releases the GIL, so
    no worker waits on another to write and nothing is sent back to be written again (h5py
    holds the GIL through every write; a shared memory map serialises threads on page
    faults)."""

    path: str
    offset: int
    shape: tuple[int, int, int]

    def open(self) -> int:
        return os.open(self.path, os.O_WRONLY)

    def write(self, fd: int, row: int, pixels: np.ndarray) -> None:
        """Write one row (``shape``) or a block of consecutive rows (``[k, *shape]``) from ``row`` on."""
        if pixels.shape[-3:] != self.shape or pixels.ndim not in (3, 4) or pixels.dtype != np.uint8:
            raise ValueError(f"rows of shape {pixels.shape} {pixels.dtype}, expected {self.shape} uint8")
        data = np.ascontiguousarray(pixels).data.cast("B")
        at = self.offset + row * int(np.prod(self.shape))
        while data:  # pwrite may write less than asked
            written = os.pwrite(fd, data, at)
            data, at = data[written:], at + written


class CacheFile:
    """A new cache file of ``capacity`` rows: ingest's, in listing order (row ``i`` = the
    ``i``-th listed photo), or one shard's.

    Rows are written through :attr:`sink` (by ingest's decoding workers, or by
    :func:`deal_into_shards`); HDF5 is touched only to create the file and, in :meth:`close`,
    to record each row's photo.
    """

    def __init__(self, path: Path, capacity: int, image_size: int, limits: ImageLimits) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (max(capacity, 1), image_size, image_size, 3)
        with h5py.File(path, "w") as f:
            offset = create_images(f, shape).id.get_offset()
            f.attrs.update(image_size=image_size, min_side=limits.min_side, max_pixels=limits.max_pixels)
        self.sink = RowSink(str(path), int(offset), (image_size, image_size, 3))

    def close(self, digests: Sequence[str]) -> None:
        """Record the photo of each row ("" for a row the workers left empty)."""
        with h5py.File(self.path, "a") as f:
            f.create_dataset("sha256", data=list(digests) or [""], dtype=_STR)


class _Rows:
    """The rows and digests of a cache file. Rows of a contiguous ``images`` dataset are read
    with ``os.preadv`` straight into the caller's array: no h5py call a row, and no memory map,
    whose pages would count in this process's resident memory (2.7 GB of it for a 200k-photo
    cache at 64 px) though the kernel only caches them. Other layouts are read through h5py."""

    def __init__(self, path: Path) -> None:
        self.file = h5py.File(path, "r")
        self.images = self.file["images"]
        self.digests: list[str] = list(self.file["sha256"].asstr()[:])
        self.attrs = dict(self.file.attrs)
        plain = self.images.chunks is None and not self.images.id.get_create_plist().get_nfilters()
        self.offset = self.images.id.get_offset() if plain else None
        self.fd = os.open(path, os.O_RDONLY) if self.offset is not None else None

    def read_into(self, row: int, out: np.ndarray) -> None:
        """Row ``row`` into ``out`` (a C-contiguous uint8 array of one row's shape)."""
        if self.fd is None:
            out[...] = self.images[row]
            return
        if os.preadv(self.fd, [memoryview(out).cast("B")], self.offset + row * out.nbytes) != out.nbytes:
            raise OSError(f"{self.file.filename}: row {row} is cut short (the cache file is truncated)")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.file.close()


def deal_into_shards(listing: Path, folder: Path, shard_of: Sequence[tuple[str, int]]) -> list[Path]:
    """Turn the listing-order cache into one file per shard, then remove it.

    Args:
        listing: the :class:`CacheFile` ingest wrote, in listing order.
        folder: where the shard files go (``pixels-NNNNN.h5``).
        shard_of: ``(sha256, shard)`` of every accepted photo, in manifest order; each shard
            file gets its photos in this order.

    Returns:
        the shard files, by shard number.
    """
    shards = sorted({shard for _, shard in shard_of}) or [0]
    if shards == [0]:  # one shard: the listing already is its file (rows are found by digest)
        os.replace(listing, cache_file(folder, 0))
        return [cache_file(folder, 0)]
    by_shard: dict[int, list[str]] = defaultdict(list)
    for digest, shard in shard_of:
        by_shard[shard].append(digest)
    rows = _Rows(listing)
    try:
        row_of = {d: i for i, d in reversed(list(enumerate(rows.digests))) if d}
        limits = ImageLimits(int(rows.attrs["min_side"]), int(rows.attrs["max_pixels"]))
        size = int(rows.attrs["image_size"])
        pixels = np.empty((size, size, 3), dtype=np.uint8)
        paths = []
        for shard in shards:
            digests = by_shard[shard]
            out = CacheFile(cache_file(folder, shard), len(digests), size, limits)
            fd = out.sink.open()
            try:
                for i, digest in enumerate(digests):
                    rows.read_into(row_of[digest], pixels)
                    out.sink.write(fd, i, pixels)
            finally:
                os.close(fd)
            out.close(digests)
            paths.append(cache_file(folder, shard))
    finally:
        rows.close()
    listing.unlink()
    return paths


class PixelCache:
    """The rows of one or more cache files, looked up by content hash; used only when their
    image size and limits are the build's (another size is ignored, never misused)."""

    def __init__(self, paths: Sequence[Path], image_size: int, limits: ImageLimits) -> None:
        self.sources: list[_Rows] = []
        self.rows: dict[str, tuple[int, int]] = {}
        self.usable = bool(paths)
        for k, path in enumerate(paths):
            source = _Rows(path)
            self.sources.append(source)
            attrs = source.attrs
            self.usable &= (int(attrs["image_size"]) == image_size and int(attrs["min_side"]) == limits.min_side
                            and int(attrs["max_pixels"]) == limits.max_pixels)
            for i, digest in enumerate(source.digests):
                if digest:
                    self.rows.setdefault(digest, (k, i))

    def holds(self, digest: str) -> bool:
        return self.usable and digest in self.rows

    def block(self, digests: Sequence[str]) -> np.ndarray | None:
        """The photos' pixels in order, or None when any of them is not cached."""
        if not all(map(self.holds, digests)):
            return None
        out = np.empty((len(digests), *self.sources[0].images.shape[1:]), dtype=np.uint8)
        for i, digest in enumerate(digests):
            k, row = self.rows[digest]
            self.sources[k].read_into(row, out[i])
        return out

    def close(self) -> None:
        for source in self.sources:
            source.close()
