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
    """A split file in the clazzify layout filled with random pixels (speed does not
    depend on the content), written in slices so memory stays small. One block of 256
    random images is written over and over, so 200k rows take a minute, not ten."""
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 255, (min(256, rows), size, size, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (rows, size, size, 3), dtype=np.uint8,
                                  chunks=(min(32, rows), size, size, 3))
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
