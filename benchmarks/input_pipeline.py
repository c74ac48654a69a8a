"""HDF5 loader ceiling against raw h5py reads (and against the model's own training rate).

    python benchmarks/input_pipeline.py [--rows 2048] [--image-size 227] [--train-steps 6]

The loader alone, no model: what ``clazzify.training.data`` delivers in images/s and GB/s,
next to raw h5py reading the same file end to end in batch-sized contiguous slices (the
most h5py gives one thread). Target: the loader >= 70% of raw. Also the two known traps,
fancy indexing of scattered rows and a per-image ``from_generator``, and (unless
``--train-steps 0``) the model's training rate on this machine, for scale.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from common import write_random_hdf5


def rate_of(iterable, max_batches: int) -> float:
    it = iter(iterable)
    next(it)  # warm-up: threads, file handles
    start = time.perf_counter()
    n = 0
    for i, batch in enumerate(it):
        n += int(batch[0].shape[0])
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - start)


def raw_h5py(path: Path, bs: int):
    """Contiguous batch-sized slices, start to end, into one reused array."""
    with h5py.File(path, "r") as f:
        images, labels = f["images"], f["labels"]
        out = np.empty((bs, *images.shape[1:]), np.uint8)
        while True:
            for start in range(0, images.shape[0] - bs + 1, bs):
                images.read_direct(out, np.s_[start : start + bs])
                yield out, labels[start : start + bs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-rows", type=int, default=8, help="the loader's shuffling unit")
    parser.add_argument("--architecture", default="alexnet")
    parser.add_argument("--train-steps", type=int, default=6, help="0 skips the training rate")
    parser.add_argument("--repeats", type=int, default=3, help="passes per loader; the best counts")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "input_pipeline.json",
                        help="where the JSON results go (the recorded run's file by default)")
    args = parser.parse_args()
    import keras

    from clazzify.training.data import HDF5Batches, make_dataset, pydataset

    path = Path(tempfile.mkdtemp()) / "train.h5"
    write_random_hdf5(path, args.rows, args.image_size)
    bs, size = args.batch_size, args.image_size
    batches = args.rows // bs - 1
    blocks = args.block_rows
    plain = HDF5Batches([path], bs, shuffle=True, block_rows=blocks)
    loader = pydataset([path], bs, workers=1, block_rows=blocks)

    def epochs(read):
        key = 0
        while True:
            key += 1
            for i in range(len(plain)):
                yield read(key, i)

    def fancy():
        with h5py.File(path, "r") as f:
            rng = np.random.default_rng(0)
            while True:
                idx = np.sort(rng.choice(args.rows, bs, replace=False))
                yield f["images"][idx], f["labels"][idx]

    def per_image():
        with h5py.File(path, "r") as f:
            for i in np.random.default_rng(0).permutation(args.rows):
                yield f["images"][i], f["labels"][i]

    import tensorflow as tf

    gen = tf.data.Dataset.from_generator(
        per_image, output_signature=(tf.TensorSpec((size, size, 3), tf.uint8), tf.TensorSpec((), tf.int64))
    ).batch(bs)
    runs = {
        "raw h5py, contiguous batch slices (1 thread)": lambda: rate_of(raw_h5py(path, bs), batches),
        f"clazzify HDF5Batches.read (shuffled blocks of {blocks})": lambda: rate_of(epochs(plain.read), batches),
        "clazzify make_dataset (tf.data)": lambda: rate_of(make_dataset([path], bs, shuffle=True, repeat=True,
                                                                               block_rows=blocks), batches),
        "clazzify pydataset (PyDataset.__getitem__)": lambda: rate_of(
            (loader[i % len(loader)] for i in range(10**9)), batches),
        "h5py fancy indexing, scattered rows": lambda: rate_of(fancy(), 8),
        "per-image from_generator": lambda: rate_of(gen, min(batches, 12)),
    }
    rates: dict[str, float] = {}
    for round_ in range(args.repeats):  # rounds interleave the loaders, so load on the machine hits all alike
        for name, run in runs.items():
            if round_ == 0 or not ("fancy" in name or "per-image" in name):  # the slow traps once
                rates[name] = max(rates.get(name, 0.0), run())
    train_rate = None
    if args.train_steps:
        from clazzify.training.models import ModelSpec, build_model

        model = build_model(ModelSpec(args.architecture, num_classes=4, image_size=size))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x = np.random.default_rng(1).integers(0, 255, (bs, size, size, 3), dtype=np.uint8)
        y = np.zeros(bs, dtype=np.int64)
        model.train_on_batch(x, y)  # compile/trace
        start = time.perf_counter()
        for _ in range(args.train_steps):
            model.train_on_batch(x, y)
        train_rate = args.train_steps * bs / (time.perf_counter() - start)
    del keras

    raw = rates["raw h5py, contiguous batch slices (1 thread)"]
    image_bytes = size * size * 3
    print(f"\n{args.rows} rows of {size}x{size}, batch {bs}, best of {args.repeats}\n")
    print("| what | images/s | GB/s | x raw h5py |" + (" x training |" if train_rate else ""))
    print("|---|---:|---:|---:|" + ("---:|" if train_rate else ""))
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate * image_bytes / 1e9:.2f} | {rate / raw:.2f} |"
              + (f" {rate / train_rate:.1f} |" if train_rate else ""))
    if train_rate:
        print(f"| training {args.architecture}@{size} on this machine (train_on_batch from memory) | "
              f"{train_rate:,.0f} | | | 1.0 |")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rates": rates, "train": train_rate, "rows": args.rows, "image_size": size,
                               "batch_size": bs, "architecture": args.architecture}, indent=2))


if __name__ == "__main__":
    main()
