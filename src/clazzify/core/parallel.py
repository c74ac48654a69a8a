"""Process pools that are safe to start from any process."""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.context import BaseContext


def process_context() -> BaseContext:
    """fork starts workers in milliseconds, but is unsafe once TensorFlow's, JAX's or
    PyTorch's threads exist in this process (a test session, a notebook); spawn then."""
    unsafe = any(name in sys.modules for name in ("tensorflow", "jax", "torch"))
    return multiprocessing.get_context("spawn" if unsafe or sys.platform != "linux" else "fork")
