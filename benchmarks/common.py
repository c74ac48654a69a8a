"""Helpers the benchmark scripts share (imported as a sibling module: the scripts run
as `python benchmarks/<name>.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

#: The real photos of ../shared (never copied into the repository).
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "restaurant-photos"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_bundle(work: Path, architecture: str, image_size: int) -> Path:
    """An untrained model of the chosen architecture, exported as training exports it
    (speed does not depend on the weights)."""
    from clazzify.core.bundle import BundleMeta
    from clazzify.training.export import export_bundle
    from clazzify.training.models import ModelSpec, build_model

    classes = ["ambiance", "food", "human", "menu"]
    model = build_model(ModelSpec(architecture, len(classes), image_size, augment=True))
    meta = BundleMeta(classes, image_size, architecture, "benchmark", "benchmark")
    return export_bundle(model, meta, work / "bundle")


def write_random_hdf5(path: Path, rows: int, size: int,
                      class_names: Sequence[str] = ("ambiance", "food", "human", "menu")) -> None:
    """A split file in the clazzify layout (``build_hdf5``'s contiguous ``images``) filled
    with random pixels (speed does not depend on the content), written in slices so memory
    stays small. One block of 256 random images is written over and over, so 200k rows take
    a minute, not ten."""
    from clazzify.training.pixels import create_images

    rng = np.random.default_rng(0)
    pool = rng.integers(0, 255, (min(256, rows), size, size, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        images = create_images(f, (rows, size, size, 3))
        for start in range(0, rows, 256):
            n = min(256, rows - start)
            images[start : start + n] = pool[:n]
        f["labels"] = rng.integers(0, len(class_names), rows)
        f.attrs.update(image_size=size, class_names=json.dumps(list(class_names)))


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it does not exit within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(fn, args: tuple, queue) -> None:
    import resource

    start = time.perf_counter()
    extra = fn(*args)
    queue.put({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(),
               # ru_maxrss of the children: the largest single worker process's peak (kB on Linux)
               "largest_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
               **extra})


def in_fresh_process(fn, *args) -> dict:
    """Run ``fn(*args)`` (a module-level function returning a dict) in a new process: its wall
    time, its peak RSS, its largest worker's peak RSS, and the fields it returned."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"{fn.__name__} failed with exit code {proc.exitcode}")
    return result
