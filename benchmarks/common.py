"""Helpers the benchmark scripts share (imported as a sibling module: the scripts run
as `python benchmarks/<name>.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np


def write_random_hdf5(path: Path, rows: int, size: int,
                      class_names: Sequence[str] = ("ambiance", "food", "human", "menu")) -> None:
    """A split file in the clazzify layout filled with random pixels (speed does not
    depend on the content), written in slices so memory stays small."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        images = f.create_dataset("images", (rows, size, size, 3), dtype=np.uint8, chunks=(32, size, size, 3))
        for start in range(0, rows, 256):
            n = min(256, rows - start)
            images[start : start + n] = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
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
