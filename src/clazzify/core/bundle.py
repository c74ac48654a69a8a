"""The model bundle: one folder that training writes and everything else reads.

::

    model.keras      the Keras model (uint8 RGB in, class probabilities out)
    model.onnx       the same model as ONNX, for ONNX Runtime serving
    clazzify.json    class_names, image_size, architecture, dataset fingerprint, code version,
                     and (once registered) the registered model's name and version

Predictors load a bundle and map uint8 ``[B, S, S, 3]`` to float32 ``[B, C]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from clazzify.core.errors import DataError

META_FILE = "clazzify.json"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
#: The engines a bundle carries a model file for, each loaded by :func:`load_predictor`.
BUNDLE_ENGINES = ("onnx", "keras")


@dataclass(frozen=True)
class BundleMeta:
    """What a model bundle was trained on and how to feed it.

    ``registered_name`` and ``registry_version`` are empty until registration writes them
    into the registered copy, so a bundle fetched outside MLflow (KServe's storage
    initializer puts it in ``/mnt/models``) still knows which registry version it is.

    ``temperature``: the softmax temperature fitted on validation data (temperature
    scaling). It is already folded into the model's classifier, so the model's outputs are
    the calibrated probabilities; it is recorded here for audit (1.0 = not calibrated).
    """

    class_names: list[str]
    image_size: int
    architecture: str
    fingerprint: str
    code_version: str
    registered_name: str = ""
    registry_version: str = ""
    temperature: float = 1.0
    #: How the model flags photos that are none of the classes: a
    #: :class:`clazzify.core.ood.OodRule` as a dict (None: a model from before the rule).
    ood: dict | None = None

    def save(self, bundle_dir: Path) -> None:
        (bundle_dir / META_FILE).write_text(json.dumps(asdict(self), indent=2))

    def registered(self, name: str, version: str) -> BundleMeta:
        """This metadata, stamped with the registered model's name and version."""
        return replace(self, registered_name=name, registry_version=str(version))

    @classmethod
    def load(cls, bundle_dir: Path) -> BundleMeta:
        path = bundle_dir / META_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise DataError(f"{bundle_dir} is not a clazzify model bundle ({path}: {e})") from e


def find_bundle(root: Path) -> Path:
    """The folder below ``root`` (or ``root`` itself) that holds ``clazzify.json``."""
    if (root / META_FILE).is_file():
        return root
    hits = sorted(root.rglob(META_FILE))
    if not hits:
        raise DataError(f"no {META_FILE} under {root}: not a clazzify model")
    return hits[0].parent


class Predictor:
    """Class probabilities for uint8 image batches, from a bundle."""

    engine: str

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = find_bundle(Path(bundle_dir))
        self.meta = BundleMeta.load(self.bundle_dir)

    def predict(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxPredictor(Predictor):
    engine = "onnx"

    def __init__(self, bundle_dir: Path, *, threads: int = 0, spinning: bool = True) -> None:
        """``spinning=False`` lets idle worker threads sleep instead of busy-waiting between
        ops: slower for a lone process, faster where other threads need the cores (a server
        decoding images beside the engine)."""
        super().__init__(bundle_dir)
        import onnxruntime as ort

        path = self.bundle_dir / ONNX_FILE
        if not path.is_file():
            raise DataError(f"{path} is missing: export the bundle with ONNX or use engine='keras'")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.ascontiguousarray(images, dtype=np.uint8)})[0]


class KerasPredictor(Predictor):
    engine = "keras"

    def __init__(self, bundle_dir: Path) -> None:
        super().__init__(bundle_dir)
        import keras

        self._model = keras.models.load_model(self.bundle_dir / KERAS_FILE, compile=False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = self._model(np.asarray(images, dtype=np.uint8), training=False)
        return np.asarray(out, dtype=np.float32)


def load_predictor(bundle_dir: Path, engine: str = "onnx") -> Predictor:
    """Load a predictor with ``engine`` ('onnx' or 'keras')."""
    if engine == "onnx":
        return OnnxPredictor(bundle_dir)
    if engine == "keras":
        return KerasPredictor(bundle_dir)
    raise DataError(f"unknown engine {engine!r}: choose one of {', '.join(BUNDLE_ENGINES)}")
