"""Ingest + HDF5 build throughput against the naive ways, side by side in one run.

    python benchmarks/ingest_hdf5.py [--source DIR] [--image-size 227] [--limit N]

Measured on the same images, one after the other:

- ``pil-loop``: one image at a time, open, convert, resize, append (the naive loader);
- ``keras-dir``: iterating ``keras.utils.image_dataset_from_directory`` at the same size;
- ``draft-1core``: the decode ceiling of one core (PIL with JPEG draft + fit), times the
  number of cores = the machine's limit for this work;
- ``clazzify``: ``ingest_images`` (full decode, hash, dedupe, split) + ``build_hdf5``
  (process pool, HDF5 writes included), and ``build_hdf5`` alone;
- ``clazzify, pixel cache``: ``ingest_images(pixel_cache=...)`` (the validation decode
  also yields the training pixels, written to an HDF5 cache) + ``build_hdf5(pixel_cache=...)``
  (copies them: one decode pass from photos to HDF5 in all), and that build alone;
- ``clazzify, N shards``: the same manifest dealt into ``--shards`` shards and each built
  by its own ``build_hdf5(shard=k)`` call, one after another, as one pipeline pod per
  shard would (on a cluster they run side by side): the cost of sharding itself.

Uses ../shared/datasets/restaurant-photos when present, else draws the synthetic set.
Prints a Markdown table and writes JSON next to this script (results/ingest_hdf5.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import PHOTOS
from PIL import Image

from clazzify.core.imaging import image_to_array
from clazzify.training.ingest import IngestConfig, ingest_images, list_source
from clazzify.training.preprocess import PreprocessConfig, build_hdf5


def pil_loop(paths: list[str], size: int) -> int:
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(np.asarray(img.convert("RGB").resize((size, size))))
    return len(np.stack(out))


def draft_loop(paths: list[str], size: int) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            image_to_array(f.read(), size)
        n += 1
    return n


KERAS_DIR = """
import sys, time, keras
start = time.perf_counter()
ds = keras.utils.image_dataset_from_directory(sys.argv[1], image_size=(int(sys.argv[2]),) * 2, batch_size=64,
                                              shuffle=False, verbose=False)
n = sum(int(x.shape[0]) for x, _ in ds)
print(n, time.perf_counter() - start)
"""


def keras_dir(root: Path, size: int) -> tuple[int, float]:
    """In a subprocess, so this process never loads TensorFlow (the HDF5 builder then
    starts its workers by fork, as the pipeline's preprocess step does)."""
    out = subprocess.run([sys.executable, "-c", KERAS_DIR, str(root), str(size)], capture_output=True,
                         text=True, check=True)
    n, seconds = out.stdout.split()[-2:]
    return int(n), float(seconds)


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn(*args)
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=PHOTOS if PHOTOS.is_dir() else None)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--limit", type=int, default=0, help="use at most N images (0 = all)")
    parser.add_argument("--shards", type=int, default=4, help="shards for the sharded build")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "ingest_hdf5.json",
                        help="where the JSON results go (the recorded run's file by default)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clazzify-bench-"))
    source = args.source
    if source is None:
        from clazzify.training.demo_data import write_demo_data

        source = tmp / "synthetic"
        write_demo_data(source, per_class=150, size=320, bad_files=False)
    items = list_source(str(source))
    if args.limit:
        rng = np.random.default_rng(0)
        keep = set(rng.choice(len(items), size=min(args.limit, len(items)), replace=False).tolist())
        items = [it for i, it in enumerate(items) if i in keep]
        source = tmp / "subset"
        for it in items:
            dest = source / it.label / Path(it.uri).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(it.uri, dest)
    paths = [it.uri for it in items]
    size = args.image_size
    cores = os.cpu_count() or 1
    rows = {}
    n, t = timed(pil_loop, paths, size)
    rows["pil-loop (1 core)"] = n / t
    n, t = keras_dir(source, size)
    rows["keras image_dataset_from_directory"] = n / t
    n, t = timed(draft_loop, paths, size)
    rows["draft decode, 1 core"] = n / t
    rows[f"decode limit ({cores} cores x draft)"] = cores * n / t
    start = time.perf_counter()
    report = ingest_images(str(source), tmp / "m.csv", tmp / "report", IngestConfig(), progress=False)
    t_ingest = time.perf_counter() - start
    start = time.perf_counter()
    build_hdf5(tmp / "m.csv", tmp / "data", PreprocessConfig(image_size=size), progress=False)
    t_hdf5 = time.perf_counter() - start
    rows["clazzify build_hdf5 alone"] = report.accepted / t_hdf5
    start = time.perf_counter()
    ingest_images(str(source), tmp / "m-px.csv", tmp / "report-px", IngestConfig(), progress=False,
                  pixel_cache=tmp / "pixels.h5", pixel_size=size)
    t_ingest_px = time.perf_counter() - start
    start = time.perf_counter()
    build_hdf5(tmp / "m-px.csv", tmp / "data-px", PreprocessConfig(image_size=size), progress=False,
               pixel_cache=tmp / "pixels.h5")
    t_hdf5_px = time.perf_counter() - start
    rows["clazzify build_hdf5 from the pixel cache"] = report.accepted / t_hdf5_px
    shard_size = -(-report.accepted // args.shards)
    ingest_images(str(source), tmp / "sharded.csv", tmp / "report-sharded", IngestConfig(shard_size=shard_size),
                  progress=False)
    start = time.perf_counter()
    for shard in range(args.shards):
        build_hdf5(tmp / "sharded.csv", tmp / "shards", PreprocessConfig(image_size=size), shard=shard,
                   progress=False)
    t_shards = time.perf_counter() - start
    rows[f"clazzify build_hdf5, {args.shards} shards in turn"] = report.accepted / t_shards
    rows["clazzify ingest + build_hdf5"] = report.accepted / (t_ingest + t_hdf5)
    rows["clazzify ingest with pixel cache + build_hdf5 from it"] = report.accepted / (t_ingest_px + t_hdf5_px)
    base = rows["pil-loop (1 core)"]
    limit = rows[f"decode limit ({cores} cores x draft)"]
    print(f"\n{len(paths)} images from {source} at {size} px, {cores} cores\n")
    print("| loader | images/s | x pil-loop | share of decode limit |")
    print("|---|---:|---:|---:|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {rate / limit:.0%} |")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": len(paths), "image_size": size, "cores": cores,
                               "source": str(source), "images_per_s": rows,
                               "ingest_s": t_ingest, "hdf5_s": t_hdf5, "hdf5_shards_s": t_shards,
                               "ingest_pixel_cache_s": t_ingest_px, "hdf5_from_pixel_cache_s": t_hdf5_px,
                               "load_average": os.getloadavg(),
                               "shards": args.shards}, indent=2))


if __name__ == "__main__":
    main()
