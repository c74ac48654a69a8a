"""Test data made once per test run, however many pytest-xdist workers need it."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills once per test run, however many pytest-xdist workers
    ask for it: the first to get here builds it under the run's shared temporary folder while
    holding a lock, the others wait on the lock and read what it built. What is in it must
    only be read (copy it to change it). Without xdist it is a plain ``mktemp``."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        path = tmp_path_factory.mktemp(name)
        build(path)
        return path
    root = tmp_path_factory.getbasetemp().parent  # every worker's basetemp lies in it
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on failure
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a failed build's leftovers: build anew
            path.mkdir()
            build(path)
            done.touch()
    return path
