"""One training function, two backends: train_model under JAX (PyDataset loader, ONNX
exported through TensorFlow in a child process), and the mixed-precision choice."""

import json
import os
import subprocess
import sys

import pytest

from clazzify.training.train import precision_policy

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("setting", "capabilities", "policy"),
    [
        ("auto", [], "float32"),  # CPU
        ("off", [(9, 0)], "float32"),
        ("auto", [(9, 0)], "mixed_bfloat16"),  # H100/H200
        ("auto", [(8, 0), (8, 6)], "mixed_bfloat16"),  # A100, A10
        ("auto", [(7, 0)], "mixed_float16"),  # V100: no bf16
        ("auto", [(8, 0), (7, 5)], "mixed_float16"),  # one old GPU decides
        ("auto", [None], "mixed_float16"),  # unknown: the safe choice
        ("on", [], "mixed_bfloat16"),  # asked for on a CPU
    ],
)
def test_bf16_where_the_gpu_has_it_fp16_only_where_not(setting, capabilities, policy):
    assert precision_policy(setting, capabilities) == policy


SCRIPT = """
import json, sys
from pathlib import Path
import keras
from clazzify.training.train import TrainConfig, train_model
assert keras.backend.backend() == "jax"
cfg = TrainConfig(architecture="compact", epochs=1, batch_size=16, learning_rate=3e-3, patience=0)
result = train_model(Path(sys.argv[1]), Path(sys.argv[2]), cfg, verbose=0)
print(json.dumps({"loss": result.history["loss"], "devices": result.devices,
                  "files": sorted(p.name for p in result.bundle_dir.iterdir())}))
"""


@pytest.mark.slow
def test_train_model_runs_under_jax_and_exports_onnx(hdf5_dir, tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(hdf5_dir), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == ["CPU"] and all(v == v for v in out["loss"])
    assert {"model.keras", "model.onnx"} <= set(out["files"])  # ONNX parity was checked at export
