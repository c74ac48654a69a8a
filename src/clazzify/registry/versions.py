"""MLflow Model Registry: look up versions and aliases, register a bundle, move the aliases.

Every alias or version lookup and every alias move of the project lives here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clazzify.core.bundle import META_FILE, BundleMeta, find_bundle
from clazzify.core.errors import ConfigError, StorageError

CHAMPION = "champion"
PREVIOUS = "previous"
#: Tag on a version whose canary failed: a retried deploy step stops at once.
REJECTED_TAG = "canary_rejected"
#: Tag on a version that a rollback demoted.
ROLLED_BACK_TAG = "rolled_back"
#: Where the pyfunc model keeps the bundle inside its artifacts (``artifacts={"bundle": ...}``).
BUNDLE_ARTIFACT_PATH = "artifacts/bundle"


@dataclass(frozen=True)
class Champion:
    """The registered model version that currently holds the ``champion`` alias."""

    version: str
    run_id: str | None
    bundle_dir: Path


def find_version(model_name: str, ref: str):  # -> ModelVersion | None
    """The ModelVersion that ``ref`` names in ``model_name``: a version number (``"3"``) or
    an alias (``"champion"``); None when there is no such version or alias.

    The one place the registry is asked "which version is that": the server's alias watch,
    the deploy and rollback steps and the champion lookups all come here.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if ref.isdigit():
            return client.get_model_version(model_name, ref)
        return client.get_model_version_by_alias(model_name, ref)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def check_registry_reachable(timeout_s: float = 5.0) -> None:
    """Refuse at once when the registry is an HTTP server nobody answers on.

    MLflow's client retries a refused connection with back-off for minutes; a command
    that cannot go on without the registry should say so in seconds instead.

    Raises:
        StorageError: nothing listens at the registry's host and port.
    """
    import socket
    from urllib.parse import urlsplit

    import mlflow

    uri = mlflow.get_registry_uri()
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        raise StorageError(
            f"cannot reach the MLflow registry at {uri} ({e.strerror or e}): start the tracking server "
            "or set MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI"
        ) from e


def get_version(model_name: str, ref: str):  # -> ModelVersion
    """:func:`find_version`, for callers that cannot go on without it.

    Raises:
        ConfigError: no such version or alias (or the registry refused the lookup); the
            message names the model, the reference, the registry and the fix.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    check_registry_reachable()
    try:
        mv = find_version(model_name, ref)
    except MlflowException as e:
        raise ConfigError(
            f"cannot look up {model_name!r} {ref!r} in the registry at {mlflow.get_registry_uri()}: "
            f"{e.message}; check MLFLOW_TRACKING_URI and the MLflow credentials"
        ) from e
    if mv is None:
        what = f"has no version {ref}" if ref.isdigit() else f"has no version or alias {ref!r}"
        holds = "" if ref.isdigit() else f" (no version of {model_name!r} holds alias {ref!r})"
        raise ConfigError(
            f"model {model_name!r} {what} in the registry at {mlflow.get_registry_uri()}{holds}: "
            "check the name, or train and register one (make demo), or set MLFLOW_TRACKING_URI"
        )
    return mv


def champion_version(model_name: str):  # -> mlflow.entities.model_registry.ModelVersion | None
    """The ModelVersion behind ``model_name@champion``, or None."""
    return find_version(model_name, CHAMPION)


def download_champion(model_name: str, dest: Path | None = None) -> Champion | None:
    """Download the champion's bundle, or None when there is no champion."""
    import mlflow

    mv = champion_version(model_name)
    if mv is None:
        return None
    dest = dest or Path(tempfile.mkdtemp(prefix="clazzify-champion-"))
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model_name}@{CHAMPION}", dst_path=str(dest)
    )
    return Champion(version=str(mv.version), run_id=mv.run_id, bundle_dir=find_bundle(Path(local)))


#: The evaluation step writes the logged candidate's model id here (beside its gate
#: report); the register step registers that logged model, nothing else.
CANDIDATE_FILE = "candidate.json"


def serving_requirements() -> list[str]:
    """What the pyfunc needs at serving time, pinned to this environment's versions, all
    from the package index: clazzify itself travels as code (``code_paths``), so nothing
    unpublished is named and ``mlflow models serve`` builds its own virtualenv."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}"
            for dist in ("mlflow-skinny", "pandas", "numpy", "onnxruntime", "pillow")]


def log_candidate(bundle_dir: Path, run_id: str, metrics: Mapping[str, float] | None = None) -> str:
    """Log ``bundle_dir`` as a pyfunc model of run ``run_id``, its evaluation ``metrics``
    linked to it; returns the logged model's id. Every candidate is logged (MLflow's Models
    view shows it with its metrics); only one that passes the gate is registered.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    import clazzify
    from clazzify.registry.pyfunc import INPUT_COLUMN, ClazzifyPyfunc

    meta = BundleMeta.load(bundle_dir)
    example = pd.DataFrame({INPUT_COLUMN: [_example_b64(meta.image_size)]})
    output = pd.DataFrame([{"label": meta.class_names[0], "probability": 1.0,
                            **{name: 0.0 for name in meta.class_names}}])
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ClazzifyPyfunc(),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(Path(clazzify.__file__).parent)],
            signature=infer_signature(example, output),
            pip_requirements=serving_requirements(),
        )
        if metrics:
            mlflow.log_metrics(dict(metrics), model_id=info.model_id)
    return info.model_id


def _example_b64(size: int) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (max(size, 32), max(size, 32)), (128, 128, 128)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def register_candidate(
    model_id: str, model_name: str, tags: Mapping[str, str], description: str | None = None
) -> str:
    """Register the logged model ``model_id`` and make it champion; returns the version.

    The version that was champion gets the ``previous`` alias (rollback target), and the
    registered copy's ``clazzify.json`` is stamped with the name and new version
    (:func:`stamp_version`). ``description`` (the model card) goes on the version.
    """
    import mlflow

    client = mlflow.MlflowClient()
    old = champion_version(model_name)
    # Idempotent, so a retried register step finds the version its first attempt made.
    done = [v for v in client.search_model_versions(f"name='{model_name}'")
            if getattr(v, "model_id", None) == model_id]
    if done:
        mv = done[0]
        old = old if old is None or str(old.version) != str(mv.version) else None
    else:
        mv = mlflow.register_model(f"models:/{model_id}", model_name, tags=dict(tags))
    if description:
        client.update_model_version(model_name, mv.version, description=description)
    with tempfile.TemporaryDirectory(prefix="clazzify-meta-") as tmp:
        location = client.get_logged_model(model_id).artifact_location.rstrip("/")
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/{BUNDLE_ARTIFACT_PATH}/{META_FILE}", dst_path=tmp
        )
        meta = BundleMeta.load(Path(local).parent)
    stamp_version(model_id, meta, model_name, str(mv.version))
    client.set_registered_model_alias(model_name, CHAMPION, mv.version)
    if old is not None:
        client.set_registered_model_alias(model_name, PREVIOUS, old.version)
    return str(mv.version)


def register_bundle(
    bundle_dir: Path, model_name: str, run_id: str, tags: Mapping[str, str],
    description: str | None = None,
) -> str:
    """Log ``bundle_dir`` in ``run_id`` and register it as champion (both steps at once, for
    callers without a separate evaluation); returns the new version."""
    return register_candidate(log_candidate(bundle_dir, run_id), model_name, tags, description)


def stamp_version(model_id: str, meta: BundleMeta, model_name: str, version: str) -> None:
    """Overwrite the logged model's ``clazzify.json`` with the registry name and version.

    The version is known only once the model is registered, so the stamped metadata is
    uploaded after :func:`mlflow.register_model`; the registry version and the logged
    model share one artifact location, so every download of the version (MLflow, or
    KServe's storage initializer into ``/mnt/models``) carries it.
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="clazzify-meta-") as tmp:
        meta.registered(model_name, version).save(Path(tmp))
        mlflow.MlflowClient().log_model_artifact(
            model_id, str(Path(tmp) / META_FILE), artifact_path=BUNDLE_ARTIFACT_PATH
        )


def download_run_file(run_id: str, artifact_path: str, dest: Path) -> Path | None:
    """One artifact file of a run (e.g. the champion's ``lineage/dataset.npz``), or None when
    the run has no such artifact (older runs)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    parent = artifact_path.rsplit("/", 1)[0] if "/" in artifact_path else ""
    try:
        listed = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, parent or None)}
    except MlflowException:
        return None
    if artifact_path not in listed:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest)))



def move_champion_back(model_name: str) -> tuple[str, str]:
    """Registry side of a rollback: ``champion`` moves to the ``previous`` version.

    The demoted version is tagged ``rolled_back=true`` and the ``previous`` alias is
    removed (nothing older is known to be good), so a second rollback fails loudly
    instead of flipping back.

    Returns:
        ``(new champion version, demoted version)``.

    Raises:
        ConfigError: there is no ``previous`` (or no ``champion``) to roll back to.
    """
    import mlflow

    previous = find_version(model_name, PREVIOUS)
    champion = find_version(model_name, CHAMPION)
    if previous is None or champion is None:
        raise ConfigError(
            f"nothing to roll back to: model {model_name!r} needs both a {CHAMPION!r} and a "
            f"{PREVIOUS!r} alias in {mlflow.get_registry_uri()}"
        )
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(model_name, CHAMPION, previous.version)
    client.delete_registered_model_alias(model_name, PREVIOUS)
    client.set_model_version_tag(model_name, champion.version, ROLLED_BACK_TAG, "true")
    return str(previous.version), str(champion.version)


def canary_rejection(model_name: str, version: str) -> str | None:
    """Why ``version``'s canary was rejected before, or None if it never was."""
    return get_version(model_name, version).tags.get(REJECTED_TAG) or None


def reject_canary(model_name: str, version: str, reason: str) -> None:
    """Tag ``version`` as a rejected canary (MLflow caps tag values at 5,000 characters)."""
    import mlflow

    mlflow.MlflowClient().set_model_version_tag(model_name, version, REJECTED_TAG, reason[:5000])
