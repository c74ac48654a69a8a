"""The model bundle: one folder that training writes and everything else reads.

::

    model.keras       the Keras model (uint8 RGB in, class probabilities out)
    model.onnx        the same model as ONNX, for ONNX Runtime serving
    model.int8.onnx   the ONNX model quantized to int8 by NNCF (QDQ), when export made it
    clazzify.json     class_names, image_size, architecture, dataset fingerprint, code version,
                      the int8-vs-float32 check, and (once registered) the registered model's
                      name and version

Predictors load a bundle and map uint8 ``[B, S, S, 3]`` to float32 ``[B, C]``. Which
predictor reads which file with which settings is one table, :data:`ENGINES`: the
evaluation step, the registry's pyfunc and the model server all load through
:func:`load_predictor`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import numpy as np

from clazzify.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

META_FILE = "clazzify.json"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"


@dataclass(frozen=True)
class BundleMeta:
    """What a model bundle was trained on and how to feed it.

    ``registered_name`` and ``registry_version`` are empty until registration writes them
    into the registered copy, so a bundle fetched outside MLflow (KServe's storage
    initializer puts it in ``/mnt/models``) still knows which registry version it is.

    ``temperature``: the softmax temperature fitted on validation data (temperature
    scaling). It is already folded into the model's classifier, so the model's outputs are
    the calibrated probabilities; it is recorded here for audit (1.0 = not calibrated).

    ``int8``: the export step's comparison of ``model.int8.onnx`` with the float32 model on
    the validation split (see :func:`clazzify.training.export.quantize_bundle`); empty when
    the bundle has no int8 model. ``int8["passed"]`` makes ``auto`` serve int8.
    """

    class_names: list[str]
    image_size: int
    architecture: str
    fingerprint: str
    code_version: str
    registered_name: str = ""
    registry_version: str = ""
    temperature: float = 1.0
    int8: dict = field(default_factory=dict)
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


# --------------------------------------------------------------------------- predictors


class Predictor:
    """Class probabilities for uint8 image batches, from a bundle.

    ``concurrency``: how many ``predict`` calls may usefully run at once, from as many
    threads (OpenVINO with several streams); 1 for engines that parallelise inside a call.
    """

    engine: str
    concurrency: int = 1

    def __init__(self, bundle_dir: Path) -> None:
        self.bundle_dir = find_bundle(Path(bundle_dir))
        self.meta = BundleMeta.load(self.bundle_dir)

    def predict(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxPredictor(Predictor):
    """ONNX Runtime on the CPU, on ``model.onnx``. (Not on the int8 model: ONNX Runtime runs
    NNCF's QDQ layout at a quarter of float32's speed, and refuses some of it: a QLinearConv
    with per-channel activation zero points. OpenVINO runs it.)"""

    engine = "onnx"

    def __init__(
        self, bundle_dir: Path, *, threads: int = 0, spinning: bool = True, file: str = ONNX_FILE,
        engine: str = "onnx",
    ) -> None:
        """``threads``: intra-op threads (0 = ONNX Runtime's default, one per core).
        ``spinning=False`` lets idle worker threads sleep instead of busy-waiting between
        ops: slower for a lone process, faster where other threads need the cores (a server
        decoding images beside the engine)."""
        super().__init__(bundle_dir)
        import onnxruntime as ort

        path = self.bundle_dir / file
        if not path.is_file():
            raise DataError(
                f"{path} is missing: export the bundle with ONNX (and int8) or choose another engine"
            )
        self.engine = engine
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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


class OpenVinoPredictor(Predictor):
    """OpenVINO on the bundle's ONNX model.

    ``precision="bf16"`` runs in bfloat16 on CPUs that have it (AVX-512 BF16, AMX); its
    probabilities differ from float32 in the second or third decimal, so adopt it only
    where the test-split accuracy stays the same (see benchmarks/README.md).

    ``streams`` > 1 compiles for throughput: that many streams share ``threads``, each
    running one call at a time, and ``predict`` may be called from that many threads at
    once (each thread has its own infer request). One single-threaded stream per core ran
    the int8 model 10% faster than one stream over both cores, and a decode thread taking
    a core then stalls one stream, not both (benchmarks/README.md, "int8").
    """

    def __init__(self, bundle_dir: Path, *, precision: str = "f32", threads: int = 0,
                 file: str = ONNX_FILE, engine: str = "openvino", streams: int = 1) -> None:
        super().__init__(bundle_dir)
        try:
            import openvino as ov
        except ImportError as e:
            raise ConfigError(
                "the openvino engines need the openvino package (a dependency of clazzify): "
                "pip install 'openvino>=2025.0,<2027'"
            ) from e
        path = self.bundle_dir / file
        if not path.is_file():
            raise DataError(f"{path} is missing: OpenVINO reads the bundle's ONNX export")
        self.engine = engine
        # LATENCY: every core on one inference at a time, for one caller; THROUGHPUT with
        # ``streams`` for as many callers (the model server's engine threads).
        config: dict = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if streams > 1:
            config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._model = ov.Core().compile_model(str(path), "CPU", config)
        self.concurrency = max(1, streams)
        self._local = threading.local()

    def predict(self, images: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._model.create_infer_request()
        request.infer({0: np.ascontiguousarray(images, dtype=np.uint8)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)


# --------------------------------------------------------------------------- the engine table


@dataclass(frozen=True)
class EngineSpec:
    """One engine: the bundle file it reads and how to load it.

    Attributes:
        name: the ``--engine`` name.
        file: the model file in the bundle.
        load: ``load(bundle_dir, threads, spinning, streams) -> Predictor``; ``threads=0``
            is the engine's default (every core), ``spinning`` whether idle threads
            busy-wait, ``streams`` how many callers it should serve at once (OpenVINO's
            streams; the other engines run one call at a time and ignore it).
        options: the provider options this engine runs with (recorded for the reader).
        threads: whether ``threads``/``spinning`` apply (Keras runs TensorFlow's own pools).
    """

    name: str
    file: str
    load: Callable[[Path, int, bool, int], Predictor]
    options: Mapping[str, str] = field(default_factory=dict)
    threads: bool = True


def _onnx(file: str, name: str) -> Callable[[Path, int, bool, int], Predictor]:
    return lambda bundle, threads, spinning, streams: OnnxPredictor(
        bundle, threads=threads, spinning=spinning, file=file, engine=name)


def _openvino(precision: str, name: str, file: str = ONNX_FILE) -> Callable[[Path, int, bool, int], Predictor]:
    return lambda bundle, threads, spinning, streams: OpenVinoPredictor(
        bundle, precision=precision, threads=threads, file=file, engine=name, streams=streams)


#: Every engine, by name: the one place that maps an engine name onto a file and a loader.
ENGINES: Mapping[str, EngineSpec] = MappingProxyType({
    "onnx": EngineSpec("onnx", ONNX_FILE, _onnx(ONNX_FILE, "onnx"),
                       {"provider": "CPUExecutionProvider", "precision": "float32"}),
    "keras": EngineSpec("keras", KERAS_FILE, lambda bundle, threads, spinning, streams: KerasPredictor(bundle),
                        {"backend": "KERAS_BACKEND"}, threads=False),
    "openvino": EngineSpec("openvino", ONNX_FILE, _openvino("f32", "openvino"),
                           {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}),
    "openvino-bf16": EngineSpec("openvino-bf16", ONNX_FILE, _openvino("bf16", "openvino-bf16"),
                                {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}),
    # OpenVINO on NNCF's int8 model: what the export's int8 check measured, and what
    # ``auto`` serves when that check passed (benchmarks/README.md, "int8").
    "openvino-int8": EngineSpec("openvino-int8", INT8_FILE, _openvino("f32", "openvino-int8", INT8_FILE),
                                {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                 "model": "int8 (NNCF, QDQ)"}),
})
#: The engines a bundle carries its own model file for (kept for the CLI's choices).
BUNDLE_ENGINES = ("onnx", "openvino-int8", "keras")
#: ``--engine`` choices everywhere: ``auto`` and every engine of the table.
ENGINE_CHOICES = ("auto", *ENGINES)


def auto_engines(bundle_dir: Path) -> list[str]:
    """What ``auto`` tries, in order: int8 on OpenVINO when the export's check passed, then
    float32 ONNX, then Keras (only the engines whose file the bundle holds)."""
    bundle = find_bundle(Path(bundle_dir))
    meta = BundleMeta.load(bundle)
    order = (["openvino-int8"] if meta.int8.get("passed") else []) + ["onnx", "keras"]
    return [name for name in order if (bundle / ENGINES[name].file).is_file()]


def load_predictor(
    bundle_dir: Path, engine: str = "onnx", *, threads: int = 0, spinning: bool = True,
    streams: int = 1,
) -> Predictor:
    """Load ``bundle_dir`` with ``engine`` (a name of :data:`ENGINES`, or ``auto``).

    Args:
        threads: intra-op threads (0 = the engine's default, every core).
        spinning: let idle intra-op threads busy-wait (best for a lone batch job; a server
            that decodes beside the engine turns it off).
        streams: callers the engine should serve at once (OpenVINO; see
            :class:`OpenVinoPredictor`); its ``concurrency`` says what it took.

    Raises:
        ConfigError: an unknown engine, or an optional engine's package is missing.
        DataError: the bundle lacks the engine's file (``auto``: lacks every file).
    """
    if engine == "auto":
        tried = []
        for name in auto_engines(bundle_dir):
            try:
                return ENGINES[name].load(Path(bundle_dir), threads, spinning, streams)
            except (ConfigError, DataError, RuntimeError, OSError) as e:
                log.warning("the %s engine cannot load %s (%s); trying the next", name, bundle_dir, e)
                tried.append(f"{name}: {e}")
        raise DataError(f"no engine can load {bundle_dir}: {'; '.join(tried) or 'no model file'}")
    spec = ENGINES.get(engine)
    if spec is None:
        raise ConfigError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINE_CHOICES)}")
    return spec.load(Path(bundle_dir), threads, spinning, streams)


def serving_threads(cores: int | None = None) -> int:
    """Intra-op threads for an engine that shares its cores with request decoding: one per
    core this process may use, run with spinning off so that a thread with no op to run
    sleeps and gives its core to decoding. Measured on 2 shared cores (benchmarks/README.md,
    "Request path"): int8 with 2 non-spinning threads beat 1 thread (leaving a core to
    decode) by 1.7-2.6x in a decode + engine pipeline, and spinning threads lost 3-6x."""
    return max(1, cores or len(os.sched_getaffinity(0)))
