"""Fetch a model bundle from where its URI points, load an engine, and watch an MLflow alias."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clazzify.core import storage
from clazzify.core.bundle import (
    KERAS_FILE,
    ONNX_FILE,
    BundleMeta,
    OpenVinoPredictor,  # noqa: F401  (re-exported: it lived here before the engine table)
    Predictor,
    find_bundle,
    load_predictor,
    serving_threads,
)
from clazzify.core.errors import ClazzifyError, ConfigError, DataError, StorageError
from clazzify.core.ood import split_for
from clazzify.serving.config import ModelSource
from clazzify.serving.protocol import check_probabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Engine:
    """A loaded model: the predictor, its bundle metadata and the version it answers as.

    Compared by identity: the batcher keys batches on the engine object itself.
    """

    predictor: Predictor
    version: str
    owned_dir: Path | None = None  # a download folder to delete when this engine retires

    @property
    def meta(self) -> BundleMeta:
        return self.predictor.meta

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predictor.predict(images)


def bundle_version(bundle_dir: Path) -> str:
    """The version a bundle fetched outside the registry answers as: the registry version
    stamped into its ``clazzify.json`` at registration, else a hash of its model file."""
    stamped = BundleMeta.load(bundle_dir).registry_version
    return stamped or content_version(bundle_dir)


def content_version(bundle_dir: Path) -> str:
    """A version for a bundle never registered: a hash of its model file."""
    for name in (ONNX_FILE, KERAS_FILE):
        path = bundle_dir / name
        if path.is_file():
            with path.open("rb") as f:
                return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()[:12]}"
    raise DataError(f"{bundle_dir} holds neither {ONNX_FILE} nor {KERAS_FILE}")


def resolve_alias(source: ModelSource) -> str:
    """The registered version an alias points at now.

    Raises:
        ConfigError: the model or alias does not exist in the tracking store.
    """
    from clazzify.registry.versions import get_version

    return str(get_version(source.registered_name, source.alias).version)


def _download_registry(uri: str, dest: Path) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except MlflowException as e:
        raise ConfigError(
            f"cannot download {uri} from {mlflow.get_tracking_uri()}: {e.message}"
        ) from e


def fetch_bundle(source: ModelSource, version: str | None = None) -> tuple[Path, str, Path | None]:
    """Make the bundle of ``source`` available locally.

    Args:
        source: where the model is.
        version: for an alias, the version already resolved (so a watcher and the
            download agree even if the alias moves in between).

    Returns:
        ``(bundle_dir, version, owned_dir)``: ``owned_dir`` is a temporary download folder
        (None for a local folder, which is used in place).
    """
    if source.kind == "local":
        root = storage.local_path(source.uri)
        if not root.is_dir():
            raise ConfigError(f"model folder {root} does not exist: check --model-uri")
        bundle = find_bundle(root)
        return bundle, bundle_version(bundle), None
    owned = Path(tempfile.mkdtemp(prefix="clazzify-serving-"))
    try:
        if source.kind == "s3":
            root = storage.download_dir(source.uri, owned)
            bundle = find_bundle(root)
            return bundle, bundle_version(bundle), owned
        if source.kind == "alias":
            version = version or resolve_alias(source)
        if source.kind in ("alias", "version"):
            version = version or source.version
            root = _download_registry(f"models:/{source.registered_name}/{version}", owned)
            return find_bundle(root), str(version), owned
        root = _download_registry(source.uri, owned)
        bundle = find_bundle(root)
        return bundle, bundle_version(bundle), owned
    except BaseException:
        shutil.rmtree(owned, ignore_errors=True)
        raise


def load_engine_predictor(bundle_dir: Path, engine: str) -> Predictor:
    """``engine`` (a name of :data:`clazzify.core.bundle.ENGINES` or ``auto``) as the server
    runs it: one intra-op thread per core, idle threads sleeping rather than spinning, so
    decoding gets the cores between engine calls (benchmarks/README.md, "Request path");
    OpenVINO as one single-threaded stream per core, one engine thread each."""
    cores = serving_threads()
    return load_predictor(bundle_dir, engine, threads=cores, spinning=False, streams=cores)


def load_engine(
    source: ModelSource,
    engine: str,
    version: str | None = None,
    version_override: str | None = None,
) -> Engine:
    """Fetch, load and warm up the model of ``source``.

    The warm-up call also checks that the model's output matches its class names, so a
    broken bundle fails at start (or is refused by a hot swap) rather than on a request.
    """
    bundle, resolved, owned = fetch_bundle(source, version)
    try:
        predictor = load_engine_predictor(bundle, engine)
        size = predictor.meta.image_size
        warm = predictor.predict(np.zeros((1, size, size, 3), dtype=np.uint8))
        try:  # the classes (and "not a class" when the bundle's unknown rule has one)
            warm = split_for(predictor.meta, warm)[0]
        except DataError as e:
            raise ClazzifyError(f"model outputs do not match its clazzify.json: {e}") from e
        check_probabilities(warm, 1, predictor.meta.class_names)
    except BaseException:
        if owned:
            shutil.rmtree(owned, ignore_errors=True)
        raise
    loaded = Engine(predictor, version_override or resolved, owned)
    log.info(
        "loaded %s version %s with the %s engine (%d classes, %d px)",
        source.uri, loaded.version, predictor.engine, len(predictor.meta.class_names), size,
    )
    return loaded


class AliasWatcher(threading.Thread):
    """Calls ``resolve()`` every ``interval_s`` and ``on_change(version)`` when it differs
    from ``current()``.

    Failures (tracking server down, a download or a bad bundle) are logged and the server
    keeps answering with the model it has. A version that failed ``max_attempts`` times is
    not tried again until the alias moves on.
    """

    def __init__(
        self, label: str, resolve: Callable[[], str], interval_s: float,
        current: Callable[[], str], on_change: Callable[[str], None], max_attempts: int = 3,
    ) -> None:
        super().__init__(name="clazzify-alias-watcher", daemon=True)
        self.label = label
        self.interval_s = interval_s
        self.max_attempts = max_attempts
        self._resolve = resolve
        self._current = current
        self._on_change = on_change
        self._stop = threading.Event()
        self._failures: dict[str, int] = {}

    def tick(self) -> None:
        """One check: resolve the alias and swap if it moved."""
        from mlflow.exceptions import MlflowException

        version = None
        try:
            version = self._resolve()
            if version == self._current() or self._failures.get(version, 0) >= self.max_attempts:
                return
            self._on_change(version)
        except (ClazzifyError, MlflowException, StorageError, OSError, RuntimeError) as e:
            if version is not None:
                self._failures[version] = self._failures.get(version, 0) + 1
            log.error("alias watch of %s failed, keeping the current model: %s", self.label, e)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
