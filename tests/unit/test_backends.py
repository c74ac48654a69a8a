"""The architectures use keras.layers/keras.ops only: they train under JAX too."""

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
out = {}
for arch in sys.argv[1:]:
    model = build_model(ModelSpec(arch, num_classes=3, image_size=32))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0])
    loss = model.train_on_batch(x, y)
    out[arch] = float(np.asarray(loss).ravel()[0])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_architecture_trains_a_step_under_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *ARCHITECTURES], capture_output=True, text=True,
                          env=env, timeout=900)  # six networks, JIT-compiled on 2 shared cores
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(losses) == set(ARCHITECTURES)
    assert all(v == v and v > 0 for v in losses.values())  # finite, positive
