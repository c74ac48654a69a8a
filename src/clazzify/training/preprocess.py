"""Preprocess: decode, resize and crop every image into one HDF5 file per split.

With ``shard=N`` only the manifest rows of shard N (assigned by ingest) are built,
into ``<split>-0000N.h5``: the pipeline runs one such task per shard in parallel and
training reads every shard through one input pipeline.

Out of core: decoding runs in a process pool over small tasks, with a bounded
number of tasks in flight, and each finished task is written straight to disk,
so memory stays flat however large the dataset is.

HDF5 layout (per split)::

    images   uint8 [N, S, S, 3], contiguous (batch reads are contiguous; the loader maps it)
    labels   int64 [N]
    uris     str   [N]
    sha256   str   [N]
    variant  int8  [N]   0 = the photo itself, k > 0 = offline augmentation k
    attrs:   class_names (JSON), image_size, fingerprint, code_version, split
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import clazzify
from clazzify.core import storage
from clazzify.core.errors import ConfigError, DataError, ImageError
from clazzify.core.imaging import RESAMPLE, ImageLimits, decode_image, image_to_array
from clazzify.core.parallel import process_context
from clazzify.training.models import DEFAULT_IMAGE_SIZE
from clazzify.training.pixels import PixelCache, RowSink, cache_files, create_images
from clazzify.training.records import SPLITS, Record, read_split_manifest

_STR = h5py.string_dtype(encoding="utf-8")


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the HDF5 step.

    Attributes:
        image_size: side of the square images written (default: the default recipe's
            :data:`~clazzify.training.models.DEFAULT_IMAGE_SIZE`).
        augment_copies: extra augmented variants written per training image.
        seed: seed for the training-row order and the augmentations.
        task_size: images per worker task.
        workers: decoding processes; 0 means one per CPU core.
        limits: the image quality limits, the same as ingest's.
    """

    image_size: int = DEFAULT_IMAGE_SIZE
    augment_copies: int = 0
    seed: int = 42
    task_size: int = 32
    workers: int = 0
    limits: ImageLimits = ImageLimits()

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be within [16, 1024], got {self.image_size}")
        if not 0 <= self.augment_copies <= 32:
            raise ConfigError(f"augment_copies must be within [0, 32], got {self.augment_copies}")
        if self.task_size < 1:
            raise ConfigError(f"task_size must be >= 1, got {self.task_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")


def dataset_fingerprint(records: Sequence[Record]) -> str:
    """A hash of what the dataset is: every image's bytes hash, label and split."""
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: (r.sha256, r.split, r.label)):
        h.update(f"{rec.sha256},{rec.label},{rec.split}\n".encode())
    return h.hexdigest()[:16]


def augment_variant(img: Image.Image, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One offline-augmented square crop: rotation, scale, zoom and crop position."""
    angle = float(rng.uniform(-15.0, 15.0))
    rotated = img.rotate(angle, resample=RESAMPLE, expand=False, fillcolor=(127, 127, 127))
    width, height = rotated.size
    # Zoom at least enough to cut the corners the rotation left empty.
    zoom = float(rng.uniform(1.1, 1.35))
    side = max(1, int(min(width, height) / zoom))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = rotated.crop((left, top, left + side, top + side))
    return np.asarray(crop.resize((image_size, image_size), RESAMPLE), dtype=np.uint8)


def decode_task(
    uris: Sequence[str],
    image_size: int,
    limits: ImageLimits,
    copies: int,
    seeds: Sequence[int],
    sink: RowSink,
    first_row: int,
) -> int:
    """Decode one task's images and write their ``len(uris) * (1 + copies)`` rows from
    ``first_row`` on straight into the split file (runs in a worker); returns the row count."""
    out = np.empty((len(uris) * (1 + copies), image_size, image_size, 3), dtype=np.uint8)
    for i, (uri, seed) in enumerate(zip(uris, seeds, strict=True)):
        base = i * (1 + copies)
        try:
            data = storage.read_bytes(uri)
            # The one image path: the model server computes these very pixels from the bytes.
            out[base] = image_to_array(data, image_size, limits)
            # Augmentations zoom in, so they start from a finer draft decode.
            img = decode_image(data, limits, draft_size=int(image_size * 1.5)) if copies else None
        except ImageError as e:
            raise DataError(
                f"{uri} passed ingest but now fails to decode ({e}): re-run ingest"
            ) from e
        rng = np.random.default_rng(seed)
        for k in range(1, copies + 1):
            out[base + k] = augment_variant(img, image_size, rng)
    fd = sink.open()
    try:
        sink.write(fd, first_row, out)
    finally:
        os.close(fd)
    return len(out)


def _tasks(records: Sequence[Record], size: int) -> Iterator[Sequence[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def _write_split(
    path: Path,
    split: str,
    records: Sequence[Record],
    class_names: Sequence[str],
    fingerprint: str,
    cfg: PreprocessConfig,
    pool: ProcessPoolExecutor | None,
    bar: tqdm,
    cache: PixelCache | None = None,
) -> int:
    """Write one split's file; returns how many rows came from the pixel cache."""
    copies = cfg.augment_copies if split == "train" else 0
    n = len(records) * (1 + copies)
    size = cfg.image_size
    index = {name: i for i, name in enumerate(class_names)}
    tmp = path.with_suffix(".h5.partial")
    with h5py.File(tmp, "w") as f:
        # Contiguous and allocated at once: the decoding workers write their rows straight
        # into it (see RowSink), so nothing is pickled back here and written a second time.
        images = create_images(f, (n, size, size, 3))
        sink = RowSink(str(tmp), int(images.id.get_offset()), (size, size, 3))
        rows = [(rec, k) for rec in records for k in range(1 + copies)]
        f["labels"] = np.array([index[rec.label] for rec, _ in rows], dtype=np.int64)
        f.create_dataset("uris", data=[rec.uri for rec, _ in rows], dtype=_STR)
        f.create_dataset("sha256", data=[rec.sha256 for rec, _ in rows], dtype=_STR)
        f["variant"] = np.array([k for _, k in rows], dtype=np.int8)
        f.attrs.update(
            class_names=json.dumps(list(class_names)),
            image_size=size,
            fingerprint=fingerprint,
            code_version=clazzify.__version__,
            split=split,
            augment_copies=copies,
        )
    seed_base = cfg.seed * 1_000_003
    copied, row = 0, 0
    # At most two tasks per worker in flight; each writes its own rows, so they finish in any
    # order and one slow task (a 4000 px scan) never leaves the other workers idle behind it.
    in_flight: set[Future] = set()
    max_in_flight = 2 * (pool._max_workers if pool else 1)
    fd = sink.open()
    try:
        for task in _tasks(records, cfg.task_size):
            cached = cache.block([r.sha256 for r in task]) if cache is not None and not copies else None
            if cached is not None:
                sink.write(fd, row, cached)
                copied += len(cached)
                bar.update(len(cached))
            else:
                args = ([r.uri for r in task], size, cfg.limits, copies,
                        [seed_base + int(r.sha256[:8], 16) for r in task], sink, row)
                if pool:
                    in_flight.add(pool.submit(decode_task, *args))
                else:
                    bar.update(decode_task(*args))
            row += len(task) * (1 + copies)
            if len(in_flight) >= max_in_flight:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                bar.update(sum(future.result() for future in done))
        done, _ = wait(in_flight, return_when=ALL_COMPLETED)
        bar.update(sum(future.result() for future in done))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return copied


def shard_file_name(split: str, shard: int | None) -> str:
    """``train.h5`` for a whole manifest, ``train-00003.h5`` for shard 3."""
    return f"{split}.h5" if shard is None else f"{split}-{shard:05d}.h5"


def build_hdf5(
    manifest_path: Path,
    out_dir: Path,
    cfg: PreprocessConfig = PreprocessConfig(),
    *,
    shard: int | None = None,
    progress: bool = True,
    pixel_cache: Path | None = None,
) -> dict[str, Path]:
    """Write ``train.h5``, ``val.h5`` and ``test.h5`` from a split manifest.

    Training rows are written in a seeded random order, so contiguous batch reads
    (the fast way to read HDF5) already mix classes. Class names and the dataset
    fingerprint come from the whole manifest, so every shard agrees on them.

    Args:
        manifest_path: split manifest written by ingest.
        out_dir: output folder.
        cfg: image size, augmentation and worker settings.
        shard: build only this shard's rows, into ``<split>-<shard:05d>.h5``.
        progress: show a progress bar.
        pixel_cache: the pixel cache folder ``ingest_images(..., pixel_cache=...)`` wrote
            (this shard's file, or every shard's without ``shard``): rows it holds at this
            ``image_size`` and these limits are copied, not decoded again (the same pixels:
            ingest wrote ``image_to_array``'s). Augmented copies, images it lacks and a
            folder without the shard's file are decoded as usual; ``summary.json`` counts
            the rows copied (``from_pixel_cache``).

    Returns:
        split name -> HDF5 path, for the splits that have images.

    Raises:
        DataError: the manifest is empty, has no such shard, or an image no longer decodes.
    """
    everything = read_split_manifest(manifest_path)
    if not everything:
        raise DataError(f"{manifest_path} lists no images")
    class_names = sorted({r.label for r in everything})
    fingerprint = dataset_fingerprint(everything)
    records = everything if shard is None else [r for r in everything if r.shard == shard]
    if not records:
        shards = sorted({r.shard for r in everything})
        raise DataError(f"{manifest_path} has no shard {shard}: its shards are {shards}")
    out_dir.mkdir(parents=True, exist_ok=True)
    by_split = {s: [r for r in records if r.split == s] for s in SPLITS}
    rng = np.random.default_rng(cfg.seed if shard is None else [cfg.seed, shard])
    train = by_split["train"]
    by_split["train"] = [train[i] for i in rng.permutation(len(train))]
    total = sum(len(v) * (1 + (cfg.augment_copies if s == "train" else 0)) for s, v in by_split.items())
    workers = cfg.workers or os.cpu_count() or 1
    cache = (PixelCache(cache_files(pixel_cache, shard), cfg.image_size, cfg.limits)
             if pixel_cache is not None else None)
    # Tasks the cache serves need no pool; start one only for what must be decoded.
    needs_pool = cache is None or cfg.augment_copies > 0 or not all(cache.holds(r.sha256) for r in records)
    copied = 0
    pool = ProcessPoolExecutor(workers, mp_context=process_context()) if workers > 1 and needs_pool else None
    paths: dict[str, Path] = {}
    try:
        with tqdm(total=total, desc="hdf5", unit="img", disable=not progress) as bar:
            for split, recs in by_split.items():
                if not recs:
                    continue
                paths[split] = out_dir / shard_file_name(split, shard)
                copied += _write_split(paths[split], split, recs, class_names, fingerprint, cfg, pool, bar, cache)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        if cache is not None:
            cache.close()
    summary = {
        "class_names": class_names,
        "image_size": cfg.image_size,
        "fingerprint": fingerprint,
        "counts": {s: len(v) for s, v in by_split.items()},
        "augment_copies": cfg.augment_copies,
        "shard": shard,
        "from_pixel_cache": copied,
    }
    name = "summary.json" if shard is None else f"summary-{shard:05d}.json"
    (out_dir / name).write_text(json.dumps(summary, indent=2))
    return paths
