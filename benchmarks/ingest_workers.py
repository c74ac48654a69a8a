"""Ingest's decoding workers: threads (the baseline) against processes, side by side.

    python benchmarks/ingest_workers.py [--source DIR] [--rounds 3]

Each round runs, one after the other on the same photos: the decode limit's one-core loop
(``image_to_array``, times the cores), then ``ingest_images`` with threads and with worker
processes, each without and with the pixel cache. Rows report the median round and the share
of the same round's decode limit (this machine's speed drifts by +-30% over minutes).
Writes results/ingest_workers.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from common import PHOTOS

from clazzify.core.imaging import image_to_array
from clazzify.training import ingest


def run_ingest(source: str, processes: bool, cache: bool, size: int) -> float:
    """Seconds of one ``ingest_images``; workers are processes or threads, as asked."""
    ingest.PROCESS_MIN_ITEMS = 0 if processes else 10**12
    out = Path(tempfile.mkdtemp(prefix="clazzify-bench-"))
    kwargs = {"pixel_cache": out / "px", "pixel_size": size} if cache else {}
    start = time.perf_counter()
    ingest.ingest_images(source, out / "m.csv", out / "report", progress=False, **kwargs)
    return time.perf_counter() - start


@click.command(help=__doc__)
@click.option("--source", type=click.Path(exists=True, file_okay=False), default=str(PHOTOS), show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--image-size", default=227, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(__file__).with_name("results") / "ingest_workers.json", show_default=True)
def main(source: str, rounds: int, image_size: int, out: Path) -> None:
    cores = os.cpu_count() or 1
    photos = [p.read_bytes() for p in sorted(Path(source).glob("*/*")) if p.is_file()]
    rows: dict[str, list[float]] = {}
    for _ in range(rounds):
        start = time.perf_counter()
        for data in photos:
            image_to_array(data, image_size)
        limit = cores * len(photos) / (time.perf_counter() - start)
        rows.setdefault("decode limit", []).append(limit)
        for processes in (False, True):
            for cache in (False, True):
                name = f"ingest, {'processes' if processes else 'threads'}, {'with' if cache else 'no'} pixel cache"
                rate = len(photos) / run_ingest(source, processes, cache, image_size)
                rows.setdefault(name, []).append(rate)
                rows.setdefault(name + " / limit", []).append(rate / limit)
    print(f"\n{len(photos)} photos from {source}, {cores} cores, median of {rounds} rounds\n")
    print("| ingest workers | images/s | share of the decode limit |")
    print("|---|---:|---:|")
    for name, rates in rows.items():
        if not name.endswith(" / limit"):
            share = np.median(rows[name + " / limit"]) if name + " / limit" in rows else 1.0
            print(f"| {name} | {np.median(rates):,.0f} | {share:.0%} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"photos": len(photos), "cores": cores, "image_size": image_size,
                               "rounds": rows}, indent=2))


if __name__ == "__main__":
    main()
