"""Write a trained Keras model as a bundle (see :mod:`clazzify.core.bundle`): .keras, ONNX
checked for parity with Keras, and the metadata file."""

from __future__ import annotations

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

    twin = inference_model(model)
    twin.save(bundle_dir / KERAS_FILE)
    if onnx:
        twin(np.zeros((1, meta.image_size, meta.image_size, 3), dtype=np.uint8))  # export needs a call
        twin.export(str(bundle_dir / ONNX_FILE), format="onnx", verbose=False)
        check_onnx_parity(twin, bundle_dir / ONNX_FILE, meta.image_size)
    meta.save(bundle_dir)
    return bundle_dir


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
