"""The environment of a subprocess that runs Keras under JAX on the CPU (the backend is
fixed when keras is first imported, so JAX checks run in a child process)."""

from __future__ import annotations

import os


def jax_cpu_env() -> dict[str, str]:
    """``os.environ`` with Keras on JAX, JAX on the CPU, and XLA's quickest CPU code
    generation: the tests need a correct step, not a fast one, and this cuts the compile
    time by a third."""
    xla = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla}".strip()}
