"""The architectures use keras.layers/keras.ops only: they train under JAX too.

Each check trains one step in a subprocess with ``KERAS_BACKEND=jax`` (the backend is
fixed when keras is first imported). Almost all of the time is XLA compiling the
training step, so XLA generates code at its quickest, the fast tier trains the one
network whose every layer is ours (``compact``: separable convolutions, batch norm,
dropout, the augmentation block), and the slow tier trains the other five without the
augmentation block (the same block in front of every network, already proven by the
fast test), two subprocesses at a time so both cores compile.
"""

import json
import os
import subprocess
import sys

import pytest

from clazzify.training.models import ARCHITECTURES

pytestmark = pytest.mark.unit

SCRIPT = """
import json, sys
import numpy as np
import keras
from clazzify.training.models import ModelSpec, build_model
assert keras.backend.backend() == "jax", keras.backend.backend()
augment = sys.argv[1] == "augment"
out = {}
for arch in sys.argv[2:]:
    model = build_model(ModelSpec(arch, num_classes=3, image_size=32, augment=augment))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0])
    loss = model.train_on_batch(x, y)
    out[arch] = float(np.asarray(loss).ravel()[0])
print(json.dumps(out))
"""

# Two groups of about equal compile time (CPU seconds at XLA's default optimisation:
# efficientnet_b0 41, efficientnet_lite0 25, mobilenet_v2 24, resnet50 22, alexnet 7).
OTHERS = (("efficientnet_b0", "resnet50"), ("mobilenet_v2", "efficientnet_lite0", "alexnet"))


def _start(architectures: tuple[str, ...], augment: bool) -> subprocess.Popen:
    # XLA's quickest CPU code generation: the test needs a correct step, not a fast one, and
    # this cuts the compile time by a third.
    xla = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla}".strip()}
    args = [sys.executable, "-c", SCRIPT, "augment" if augment else "plain", *architectures]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _losses(proc: subprocess.Popen) -> dict[str, float]:
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _assert_trained(losses: dict[str, float], architectures) -> None:
    assert set(losses) == set(architectures)
    assert all(v == v and 0 < v < float("inf") for v in losses.values()), losses  # finite, positive


def test_the_compact_network_with_augmentation_trains_a_step_under_jax():
    pytest.importorskip("jax")
    _assert_trained(_losses(_start(("compact",), augment=True)), ("compact",))


@pytest.mark.slow
def test_every_other_architecture_trains_a_step_under_jax():
    pytest.importorskip("jax")
    assert sorted(sum(OTHERS, ("compact",))) == sorted(ARCHITECTURES), "a new architecture joins OTHERS"
    procs = [_start(group, augment=False) for group in OTHERS]
    losses = {}
    try:
        for proc in procs:
            losses.update(_losses(proc))
    finally:
        for proc in procs:  # a failed or timed-out group must not leave the other running
            proc.kill()
            proc.wait()
    _assert_trained(losses, sum(OTHERS, ()))
