"""Write a trained Keras model as a bundle (see :mod:`clazzify.core.bundle`): .keras, ONNX
checked for parity with Keras, and the metadata file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from clazzify.core.bundle import KERAS_FILE, ONNX_FILE, BundleMeta
from clazzify.core.errors import DataError
from clazzify.training.models import inference_model


def export_bundle(model, meta: BundleMeta, bundle_dir: Path, *, onnx: bool = True) -> Path:
    """Save ``model``'s inference twin (no augmentation layers) as .keras (and ONNX) plus
    metadata into ``bundle_dir``.

    The twin holds only stock Keras layers, so the model server loads the .keras file
    without importing the training code's augmentation layer.
    """
    bundle_dir.mkdir(parents=True, exist_ok=True)

    import keras

    twin = inference_model(model)
    twin.save(bundle_dir / KERAS_FILE)
    if onnx and keras.backend.backend() == "tensorflow":
        export_onnx(twin, bundle_dir / ONNX_FILE, meta.image_size)
    elif onnx:
        export_onnx_with_tensorflow(bundle_dir / KERAS_FILE, bundle_dir / ONNX_FILE, meta.image_size)
    meta.save(bundle_dir)
    return bundle_dir


def export_onnx(model, onnx_path: Path, image_size: int) -> None:
    """Write ``model`` (TensorFlow backend) as ONNX through tf2onnx and check parity."""
    model(np.zeros((1, image_size, image_size, 3), dtype=np.uint8))  # export needs a call
    model.export(str(onnx_path), format="onnx", verbose=False)
    check_onnx_parity(model, onnx_path, image_size)


def export_onnx_with_tensorflow(keras_path: Path, onnx_path: Path, image_size: int) -> None:
    """ONNX from a saved .keras file, in a child process on the TensorFlow backend.

    Keras exports ONNX from JAX only through the ``jax2onnx`` package; the TensorFlow
    path (tf2onnx) is the one the parity check has covered, and the .keras file holds
    stock layers only, so a JAX-trained model is exported by reloading it under
    TensorFlow (``tensorflow-cpu`` is enough).

    Raises:
        DataError: the export or its parity check failed (the child's last error line).
    """
    code = (
        "import sys; from pathlib import Path; import keras; "
        "from clazzify.training.export import export_onnx; "
        "export_onnx(keras.models.load_model(sys.argv[1], compile=False), Path(sys.argv[2]), int(sys.argv[3]))"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code, str(keras_path), str(onnx_path), str(image_size)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"ONNX export of {keras_path} under TensorFlow failed: {last}")


def check_onnx_parity(model, onnx_path: Path, image_size: int, *, atol: float = 1e-3) -> None:
    """Refuse an ONNX export that needs more than the image or disagrees with Keras.

    Raises:
        DataError: the ONNX graph has extra inputs or its probabilities differ from the
            Keras model's by more than ``atol`` on the same images.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    if len(inputs) != 1:
        raise DataError(
            f"{onnx_path} takes {len(inputs)} inputs {inputs}, not just the image: a layer's constants were "
            "left out of the graph by the converter; serve with engine='keras' or fold the layer "
            "(clazzify.training.models.inference_model)"
        )
    images = np.random.default_rng(0).integers(0, 256, (4, image_size, image_size, 3), dtype=np.uint8)
    expected = np.asarray(model(images, training=False), dtype=np.float32)
    got = session.run(None, {inputs[0]: images})[0]
    worst = float(np.abs(expected - got).max())
    if worst > atol:
        raise DataError(f"{onnx_path} disagrees with the Keras model by {worst:.2g} (> {atol}) on the same images")
