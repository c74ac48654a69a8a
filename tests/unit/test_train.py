"""Training, the input pipeline and the bundle (small: 32 px, the compact network); one
training function under two backends (JAX: PyDataset loader, ONNX exported through
TensorFlow in a child process), and the mixed-precision choice."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clazzify.core.bundle import BundleMeta, load_predictor
from clazzify.core.errors import ConfigError, DataError
from clazzify.training.data import make_dataset
from clazzify.training.evaluate import evaluate_model, iter_split
from clazzify.training.models import ARCHITECTURES, ModelSpec, build_model
from clazzify.training.train import TrainConfig, precision_policy, train_model
from tests.jax_env import jax_cpu_env

pytestmark = pytest.mark.unit


def test_dataset_yields_every_row_once_per_epoch(hdf5_dir):
    import h5py

    with h5py.File(hdf5_dir / "train.h5") as f:
        expected = np.sort(f["labels"][:])
        n = len(expected)
    ds = make_dataset([hdf5_dir / "train.h5"], batch_size=8, shuffle=True, seed=1, block_rows=4)
    assert int(ds.cardinality()) == -(-n // 8)
    for _ in range(2):
        labels = np.concatenate([y.numpy() for _, y in ds])
        np.testing.assert_array_equal(np.sort(labels), expected)
    first = np.concatenate([y.numpy() for _, y in ds])
    second = np.concatenate([y.numpy() for _, y in ds])
    assert not np.array_equal(first, second)  # reshuffled each epoch


def test_loss_falls_and_bundle_is_complete(tiny_run):
    out, result = tiny_run  # the session's run: compact, 2 epochs at 32 px
    loss = result.history["loss"]
    assert len(loss) == 2 and loss[1] < loss[0]
    assert {p.name for p in result.bundle_dir.iterdir()} >= {"model.keras", "model.onnx", "clazzify.json"}
    meta = BundleMeta.load(result.bundle_dir)
    assert meta.image_size == 32 and meta.class_names == ["ambiance", "food", "human", "menu"]
    assert json.loads((out / "history.json").read_text())["loss"] == loss
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert result.class_counts and sum(result.class_counts.values()) > 0


def test_onnx_and_keras_agree(tiny_bundle, hdf5_dir):
    images, _ = next(iter_split(hdf5_dir / "test.h5", 16))
    onnx = load_predictor(tiny_bundle, "onnx").predict(images)
    keras_probs = load_predictor(tiny_bundle, "keras").predict(images)
    assert onnx.shape == (len(images), 4)
    np.testing.assert_allclose(onnx.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(onnx - keras_probs).max() <= 1e-4


@pytest.mark.slow
def test_efficientnet_exports_to_onnx_that_takes_only_the_image(tmp_path):
    """EfficientNet's Normalization layer keeps its statistics as eager tensors, which the
    ONNX converter turned into extra graph inputs; the export folds it into the graph."""
    import keras

    from clazzify.training.export import export_bundle

    model = build_model(ModelSpec("efficientnet_b0", 4, 32))
    (norm,) = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Normalization)]
    norm.adapt_mean.assign(np.array([100.0, 120.0, 90.0], dtype=np.float32))  # as ImageNet weights would
    norm.adapt_variance.assign(np.array([900.0, 400.0, 2500.0], dtype=np.float32))
    norm.finalize_state()
    meta = BundleMeta(["a", "b", "c", "d"], 32, "efficientnet_b0", "fp", "0")
    export_bundle(model, meta, tmp_path)
    images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    onnx = load_predictor(tmp_path, "onnx").predict(images)
    keras_probs = load_predictor(tmp_path, "keras").predict(images)
    assert onnx.shape == (8, 4)
    assert np.abs(onnx - keras_probs).max() <= 1e-4


def test_evaluate_writes_metrics_and_plots(tiny_bundle, hdf5_dir, tmp_path):
    metrics = evaluate_model(tiny_bundle, hdf5_dir / "test.h5", tmp_path)
    assert 0.0 <= metrics.accuracy <= 1.0 and metrics.n == sum(metrics.support.values())
    for name in ("metrics.json", "confusion.json", "confusion.png", "misclassified.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.slow
def test_resume_from_backup(hdf5_dir, tmp_path):
    """A run killed after epoch 1 resumes at epoch 2 instead of starting over."""
    import keras

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt

    cfg = TrainConfig(architecture="compact", epochs=2, batch_size=16, patience=0, onnx=False)
    backup = tmp_path / "backup"
    with pytest.raises(KeyboardInterrupt):
        train_model(hdf5_dir, tmp_path / "a", cfg, checkpoint_dir=backup, verbose=0, callbacks=[Crash()])
    assert any(backup.iterdir())
    result = train_model(hdf5_dir, tmp_path / "b", cfg, checkpoint_dir=backup, verbose=0)
    assert result.epochs_run == 1  # only the epoch that was left
    assert not backup.exists()  # a finished run removes its backup


#: keras.applications backbones take seconds each to build: the slow tier builds them.
APPLICATIONS = {"mobilenet_v2", "efficientnet_b0", "resnet50"}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in APPLICATIONS else a
                                  for a in ARCHITECTURES])
def test_every_architecture_builds_and_takes_uint8(arch):
    model = build_model(ModelSpec(architecture=arch, num_classes=3, image_size=32, augment=False))
    out = model(np.zeros((2, 32, 32, 3), dtype=np.uint8), training=False)
    assert tuple(out.shape) == (2, 3)


def test_bad_settings():
    with pytest.raises(ConfigError, match="unknown architecture"):
        ModelSpec(architecture="vgg99")
    with pytest.raises(ConfigError, match="imagenet"):
        ModelSpec(architecture="alexnet", init_weights="imagenet")
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)
    with pytest.raises(DataError, match="not a folder of HDF5 files"):
        train_model(Path("/nonexistent"), Path("/tmp/x"))


def test_balanced_class_weights():
    from clazzify.training.train import balanced_class_weights

    w = balanced_class_weights([10, 30, 0])
    assert w == {0: pytest.approx(40 / 30), 1: pytest.approx(40 / 90), 2: 0.0}
    assert w[0] * 10 == pytest.approx(w[1] * 30)  # each class weighs the same in total


@pytest.mark.slow
def test_from_scratch_backbones_use_fast_batchnorm_statistics():
    import keras

    model = build_model(ModelSpec("mobilenet_v2", num_classes=3, image_size=32, augment=False))
    backbone = next(layer for layer in model.get_layer("core").layers if isinstance(layer, keras.Model))
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 for layer in norms)


# -- under JAX, and the mixed-precision choice ---------------------------------------------


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


JAX_TRAIN_SCRIPT = """
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
    proc = subprocess.run([sys.executable, "-c", JAX_TRAIN_SCRIPT, str(hdf5_dir), str(tmp_path / "out")],
                          capture_output=True, text=True, env=jax_cpu_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == ["CPU"] and all(v == v for v in out["loss"])
    assert {"model.keras", "model.onnx"} <= set(out["files"])  # ONNX parity was checked at export
