"""HDF5 -> tf.data throughput against the model's own training throughput.

    python benchmarks/input_pipeline.py [--rows 2048] [--image-size 227] [--architecture alexnet]

Target: the input pipeline delivers >= 5x what training consumes, so input is never
the bottleneck. Also measures the two known traps side by side: h5py fancy indexing
of scattered rows, and a per-image ``from_generator``.
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


def rate_of(iterable, batch_size: int, max_batches: int) -> float:
    it = iter(iterable)
    next(it)  # warm-up: threads, file handles
    start = time.perf_counter()
    n = 0
    for i, batch in enumerate(it):
        n += int(batch[0].shape[0])
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--architecture", default="alexnet")
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "input_pipeline.json",
                        help="where the JSON results go (the recorded run's file by default)")
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    from clazzify.training.data import make_dataset
    from clazzify.training.models import ModelSpec, build_model

    path = Path(tempfile.mkdtemp()) / "train.h5"
    write_random_hdf5(path, args.rows, args.image_size)
    bs = args.batch_size
    batches = args.rows // bs - 1
    ours = rate_of(make_dataset([path], bs, shuffle=True, repeat=True), bs, batches)

    def fancy():
        with h5py.File(path, "r") as f:
            rng = np.random.default_rng(0)
            while True:
                idx = np.sort(rng.choice(args.rows, bs, replace=False))
                yield f["images"][idx], f["labels"][idx]

    fancy_rate = rate_of(fancy(), bs, 8)

    def per_image():
        with h5py.File(path, "r") as f:
            for i in np.random.default_rng(0).permutation(args.rows):
                yield f["images"][i], f["labels"][i]

    size = args.image_size
    gen = tf.data.Dataset.from_generator(
        per_image,
        output_signature=(tf.TensorSpec((size, size, 3), tf.uint8), tf.TensorSpec((), tf.int64)),
    ).batch(bs)
    gen_rate = rate_of(gen, bs, min(batches, 12))

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

    print(f"\n{args.rows} rows of {size}x{size}, batch {bs}, model {args.architecture}\n")
    print("| what | images/s | x training |")
    print("|---|---:|---:|")
    for name, rate in (
        (f"training ({args.architecture}, from memory)", train_rate),
        ("clazzify tf.data (block shuffle)", ours),
        ("h5py fancy indexing, scattered rows", fancy_rate),
        ("per-image from_generator", gen_rate),
    ):
        print(f"| {name} | {rate:,.0f} | {rate / train_rate:.1f} |")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"train": train_rate, "clazzify": ours, "fancy": fancy_rate,
                               "from_generator": gen_rate, "rows": args.rows, "image_size": size,
                               "architecture": args.architecture}, indent=2))


if __name__ == "__main__":
    main()
