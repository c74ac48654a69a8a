"""Out-of-core input pipeline: HDF5 split files -> batches, for any Keras backend.

:class:`HDF5Batches` plans and reads whole batches in numpy: each epoch the rows are cut
into small blocks of consecutive rows at a random offset, the blocks are shuffled, and
consecutive blocks make a batch, read with one contiguous ``read_direct`` per block into
the batch array (fancy indexing of scattered rows is two orders of magnitude slower).
Uncompressed files (what preprocess writes) are read straight from their bytes through a
read-only memory map of each chunk, so reader threads copy in parallel instead of queuing
on h5py's global lock; compressed files fall back to h5py.
Two thin wrappers feed Keras: :func:`make_dataset` (``tf.data``, TensorFlow) and
:func:`pydataset` (``keras.utils.PyDataset``, JAX or any backend). Every reader thread
opens its own file handle: a handle shared across threads or a fork breaks.
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


class HDF5Batches:
    """Batches of ``(uint8 images [B, S, S, 3], int64 labels [B])`` over HDF5 split files.

    An epoch is planned from a key (``seed`` and the key make it reproducible): rows are cut
    into blocks of ``block_rows`` consecutive rows starting at a random offset, the blocks
    are shuffled, and ``batch_size / block_rows`` consecutive blocks make one batch. So a
    batch holds blocks from all over the files (never one run of consecutive rows: a
    class-ordered file still gives mixed batches), and which rows share a block changes
    every epoch. Rows inside a batch are not reordered: a batch's gradient and its
    BatchNorm statistics do not depend on row order. Without ``shuffle`` rows come in file
    order. Thread-safe: every thread reads through its own file handles.
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        block_rows: int = 8,
        segments: Sequence[Segment] | None = None,
    ) -> None:
        if batch_size < 1 or block_rows < 1:
            raise DataError(f"batch_size and block_rows must be >= 1, got {batch_size} and {block_rows}")
        self.info = inspect_split(paths)
        self.batch_size, self.shuffle, self.seed, self.block_rows = batch_size, shuffle, seed, block_rows
        self.segments = np.array(
            segments if segments is not None else [(i, 0, n) for i, n in enumerate(self.info.rows)], dtype=np.int64
        ).reshape(-1, 3)
        self.total = int((self.segments[:, 2] - self.segments[:, 1]).sum())
        self._labels = [read_column([p], "labels").astype(np.int64) for p in self.info.paths]
        self._maps = [_chunk_views(p) for p in self.info.paths]
        self._local = threading.local()
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return -(-self.total // self.batch_size)

    def plan(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """``(file index, row)`` of every row of the epoch ``key``, in reading order."""
        with self._lock:
            if key not in self._plans:
                if len(self._plans) >= 4:  # an epoch or two in flight at most
                    self._plans.pop(next(iter(self._plans)))
                self._plans[key] = self._make_plan(key)
            return self._plans[key]

    def _make_plan(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, key])
        offset = int(rng.integers(self.block_rows)) if self.shuffle else 0
        files, starts, stops = [], [], []
        for i, first, stop in self.segments:
            cuts = np.unique(np.r_[first, np.arange(first + offset, stop, self.block_rows), stop])
            cuts = cuts[(cuts >= first) & (cuts <= stop)]
            files.append(np.full(len(cuts) - 1, i))
            starts.append(cuts[:-1])
            stops.append(cuts[1:])
        file_of, start, stop = (np.concatenate(v).astype(np.int64) for v in (files, starts, stops))
        if self.shuffle:
            order = rng.permutation(len(start))
            file_of, start, stop = file_of[order], start[order], stop[order]
        lengths = stop - start
        rows = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        return np.repeat(file_of, lengths), rows

    def _dataset(self, idx: int) -> h5py.Dataset:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        if idx not in handles:
            handles[idx] = h5py.File(self.info.paths[idx], "r")["images"]
        return handles[idx]

    def read(self, key: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of epoch ``key``."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range: {len(self)} batches")
        file_of, rows = self.plan(int(key))
        sel = slice(index * self.batch_size, min((index + 1) * self.batch_size, self.total))
        file_of, rows = file_of[sel], rows[sel]
        size = self.info.image_size
        images = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        labels = np.empty(len(rows), dtype=np.int64)
        # runs of consecutive rows of one file: one contiguous read each
        breaks = np.flatnonzero((np.diff(file_of) != 0) | (np.diff(rows) != 1)) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            f, r = int(file_of[a]), int(rows[a])
            views = self._maps[f]
            if views is None:
                self._dataset(f).read_direct(images, np.s_[r : r + b - a], np.s_[a:b])
            else:
                chunk_rows = len(views[0])
                while a < b:  # chunk by chunk
                    c, o = divmod(r, chunk_rows)
                    n = min(b - a, chunk_rows - o)
                    images[a : a + n] = views[c][o : o + n]
                    labels[a : a + n] = self._labels[f][r : r + n]
                    a, r = a + n, r + n
                continue
            labels[a:b] = self._labels[f][r : r + b - a]
        return images, labels


def _chunk_views(path: str) -> list[np.ndarray] | None:
    """Read-only arrays over the bytes of each chunk of ``images`` (chunk ``i`` holds rows
    ``i * chunk_rows ...``), or None when the data cannot be mapped: compressed, chunks
    that split a row, or chunks never written."""
    with h5py.File(path, "r") as f:
        ds = f["images"]
        rows, dtype = ds.shape[0], ds.dtype
        if ds.id.get_create_plist().get_nfilters() or rows == 0:
            return None
        if ds.chunks is None:  # contiguous layout: one span
            offset = ds.id.get_offset()
            spans, chunk_rows = ([(0, offset)] if offset is not None else []), rows
        else:
            chunk_rows = ds.chunks[0]
            if tuple(ds.chunks[1:]) != tuple(ds.shape[1:]):
                return None
            spans = [(info.chunk_offset[0], info.byte_offset)
                     for info in map(ds.id.get_chunk_info, range(ds.id.get_num_chunks()))]
        shape = (chunk_rows, *ds.shape[1:])
    if len(spans) != -(-rows // chunk_rows):
        return None
    data = np.memmap(path, mode="r", dtype=np.uint8)
    return [np.ndarray(shape, dtype, buffer=data, offset=offset) for _, offset in sorted(spans)]


def make_dataset(
    paths: Sequence[Path | str],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    block_rows: int = 8,
    repeat: bool = False,
    segments: Sequence[Segment] | None = None,
):  # -> tf.data.Dataset
    """A ``tf.data.Dataset`` of :class:`HDF5Batches` batches, read on tf.data's threads.

    Each pass over the dataset (each Keras epoch) draws a new epoch key, so a new plan.
    ``segments`` restricts it to some row ranges of the files (see :func:`block_index`).
    """
    import tensorflow as tf

    batches = HDF5Batches(paths, batch_size, shuffle=shuffle, seed=seed, block_rows=block_rows, segments=segments)
    n, size = len(batches), batches.info.image_size
    if shuffle:
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        keys = keys if repeat else keys.take(1)
    else:
        keys = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
        keys = keys.repeat() if repeat else keys
    ds = keys.flat_map(lambda key: tf.data.Dataset.range(n).map(lambda i: (key, i)))

    def read(key, index):
        images, labels = tf.numpy_function(batches.read, [key, index], (tf.uint8, tf.int64), stateful=False)
        images.set_shape([None, size, size, 3])
        labels.set_shape([None])
        return images, labels

    ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not repeat:  # flat_map hides the length; Keras needs it for progress and schedules
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    return ds.prefetch(tf.data.AUTOTUNE)


def pydataset(
    paths: Sequence[Path | str],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    block_rows: int = 8,
    segments: Sequence[Segment] | None = None,
    workers: int = 4,
    max_queue_size: int = 16,
    one_hot: int | None = None,
):  # -> keras.utils.PyDataset
    """The same batches as :func:`make_dataset` as a ``keras.utils.PyDataset``: numpy on
    threads, for any backend (JAX, PyTorch, TensorFlow).

    A new epoch key is drawn after every epoch (Keras joins the worker threads first, so
    no batch of one epoch is read with the next epoch's plan). ``one_hot=k`` gives
    one-hot float32 labels of ``k`` classes.
    """
    import keras

    batches = HDF5Batches(paths, batch_size, shuffle=shuffle, seed=seed, block_rows=block_rows, segments=segments)

    class HDF5Loader(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max_queue_size)
            self._keys = np.random.default_rng(seed)
            self.key = 0
            self.on_epoch_end()

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            images, labels = batches.read(self.key, index)
            if one_hot is not None:
                labels = np.eye(one_hot, dtype=np.float32)[labels]
            return images, labels

        def on_epoch_end(self) -> None:
            if shuffle:
                self.key = int(self._keys.integers(2**62))

    return HDF5Loader()
