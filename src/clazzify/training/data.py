"""Out-of-core input pipeline: HDF5 split files -> ``tf.data``.

HDF5 is read in contiguous row blocks (fancy indexing of scattered rows is two
orders of magnitude slower), blocks are shuffled each epoch, rows are shuffled
again in a bounded buffer, then batched and prefetched. Every reader thread opens
its own file handle: a handle shared across threads or a fork breaks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from clazzify.core.errors import DataError


@dataclass(frozen=True)
class SplitInfo:
    """What the HDF5 files of one split hold."""

    paths: tuple[str, ...]
    rows: tuple[int, ...]
    image_size: int
    class_names: tuple[str, ...]

    @property
    def total(self) -> int:
        return sum(self.rows)


#: Where HDF5 files are: one folder, or several (one per preprocessing shard task).
DataDirs = Path | str | Sequence[Path | str]


def as_paths(paths: Path | str | Sequence[Path | str]) -> list[Path]:
    """One path or several, as a list of paths."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def split_files(data_dirs: DataDirs, split: str) -> list[Path]:
    """Every HDF5 file of ``split`` in ``data_dirs``: ``<split>.h5`` or shards ``<split>-*.h5``.

    Raises:
        DataError: a folder is missing, none holds the split, or one holds both a
            whole-split file and shards (the rows would be read twice).
    """
    dirs = as_paths(data_dirs)
    paths: list[Path] = []
    for folder in dirs:
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder of HDF5 files: run preprocess first")
        whole, shards = folder / f"{split}.h5", sorted(folder.glob(f"{split}-*.h5"))
        if whole.is_file() and shards:
            raise DataError(
                f"{folder} holds both {whole.name} and {len(shards)} {split}-*.h5 shard(s): "
                "they would be read twice; remove one or the other"
            )
        paths += [whole] if whole.is_file() else shards
    if not paths:
        where = ", ".join(str(d) for d in dirs)
        raise DataError(f"no {split}.h5 (or {split}-*.h5 shards) in {where}: run preprocess first")
    return paths


def read_column(paths: Sequence[Path | str], name: str) -> np.ndarray:
    """Dataset ``name`` of every file in ``paths``, read end to end (strings decoded)."""
    parts = []
    for path in paths:
        with h5py.File(path, "r") as f:
            data = f[name]
            parts.append(data.asstr()[:] if data.dtype.kind == "O" else data[:])
    return np.concatenate(parts)


def read_rows(paths: Sequence[Path | str], rows: np.ndarray, dataset: str = "images") -> np.ndarray:
    """Rows of ``dataset`` by global index over ``paths`` read end to end, in ``rows``' order."""
    rows = np.asarray(rows, dtype=np.int64)
    offsets, parts, order = 0, [], []
    for path in paths:
        with h5py.File(path, "r") as f:
            n = f[dataset].shape[0]
            mine = np.flatnonzero((rows >= offsets) & (rows < offsets + n))
            if len(mine):
                local = rows[mine] - offsets
                sort = np.argsort(local, kind="stable")
                # h5py wants increasing, unique indices; read those, then fan back out.
                uniq, inverse = np.unique(local[sort], return_inverse=True)
                block = f[dataset][uniq][inverse]
                parts.append(block)
                order.append(mine[sort])
            offsets += n
    if len(rows) and (rows.min() < 0 or rows.max() >= offsets):
        raise DataError(f"row index out of range: the files hold {offsets} rows")
    if not parts:
        return np.empty((0,), dtype=np.uint8)
    out = np.concatenate(parts)
    result = np.empty_like(out)
    result[np.concatenate(order)] = out
    return result


def inspect_split(paths: Sequence[Path | str]) -> SplitInfo:
    """Check that ``paths`` are compatible HDF5 shards and describe them."""
    if not paths:
        raise DataError("no HDF5 files given")
    rows, sizes, names = [], set(), set()
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                rows.append(int(f["images"].shape[0]))
                sizes.add(int(f.attrs["image_size"]))
                names.add(str(f.attrs["class_names"]))
        except (OSError, KeyError) as e:
            raise DataError(f"{path} is not a clazzify HDF5 file: {e}") from e
    if len(sizes) != 1 or len(names) != 1:
        raise DataError(f"HDF5 shards disagree on image_size {sizes} or class_names {names}")

    return SplitInfo(
        paths=tuple(str(p) for p in paths),
        rows=tuple(rows),
        image_size=sizes.pop(),
        class_names=tuple(json.loads(names.pop())),
    )


class _BlockReader:
    """Reads ``[start, stop)`` rows of a shard; one open handle per thread and file."""

    def __init__(self, paths: Sequence[str]) -> None:
        self._paths = list(paths)
        self._local = threading.local()

    def _file(self, idx: int) -> h5py.File:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if idx not in handles:
            handles[idx] = h5py.File(self._paths[idx], "r")
        return handles[idx]

    def __call__(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx, start, stop = (int(v) for v in block)
        f = self._file(idx)
        return f["images"][start:stop], f["labels"][start:stop]


Segment = tuple[int, int, int]  # (file index, first row, end row)


def block_index(rows: Sequence[int], block_rows: int, segments: Sequence[Segment] | None = None) -> np.ndarray:
    """``[n_blocks, 3]`` of (file index, start, stop) covering every row exactly once.

    Args:
        rows: rows per file.
        block_rows: rows per block (the unit of shuffling and reading).
        segments: only these row ranges (e.g. the training folds of k-fold); default all.
    """
    segments = segments if segments is not None else [(i, 0, n) for i, n in enumerate(rows)]
    blocks = [
        (i, start, min(start + block_rows, stop))
        for i, first, stop in segments
        for start in range(first, stop, block_rows)
    ]
    return np.array(blocks, dtype=np.int64).reshape(-1, 3)


def make_dataset(
    paths: Sequence[Path | str],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    block_rows: int = 32,
    shuffle_buffer: int = 1024,
    repeat: bool = False,
    segments: Sequence[Segment] | None = None,
):  # -> tf.data.Dataset
    """A ``tf.data.Dataset`` of ``(uint8 images [B,S,S,3], int64 labels [B])`` batches.

    ``segments`` restricts it to some row ranges of the files (see :func:`block_index`).
    """
    import tensorflow as tf

    info = inspect_split(paths)
    reader = _BlockReader(info.paths)
    size = info.image_size
    blocks = block_index(info.rows, block_rows, segments)
    total = int((blocks[:, 2] - blocks[:, 1]).sum())
    ds = tf.data.Dataset.from_tensor_slices(blocks)
    if shuffle:
        ds = ds.shuffle(len(blocks), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def read(block):
        images, labels = tf.numpy_function(reader, [block], (tf.uint8, tf.int64), stateful=False)
        images.set_shape([None, size, size, 3])
        labels.set_shape([None])
        return images, labels

    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    ds = ds.unbatch()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    if not repeat:  # unbatch hides the length; Keras needs it for progress and schedules
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-total // batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE)


def pydataset(
    paths: Sequence[Path | str],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    workers: int = 4,
    max_queue_size: int = 16,
):  # -> keras.utils.PyDataset
    """A backend-agnostic numpy loader over the HDF5 files (JAX, PyTorch or TensorFlow).

    Each item is one contiguous block of ``batch_size`` rows, read by a thread with its
    own file handle; block order is reshuffled every epoch.
    """
    import keras

    info = inspect_split(paths)
    blocks = block_index(info.rows, batch_size)
    reader = _BlockReader(info.paths)

    class HDF5Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
            self._order = np.arange(len(blocks))
            self._rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self) -> int:
            return len(blocks)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            return reader(blocks[self._order[index]])

        def on_epoch_end(self) -> None:
            if shuffle:
                self._rng.shuffle(self._order)

    return HDF5Batches()
