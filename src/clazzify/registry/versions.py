"""MLflow Model Registry helpers: find the champion, register a bundle, move aliases."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clazzify.core.bundle import META_FILE, BundleMeta, find_bundle

CHAMPION = "champion"
PREVIOUS = "previous"
#: Where the pyfunc model keeps the bundle inside its artifacts (``artifacts={"bundle": ...}``).
BUNDLE_ARTIFACT_PATH = "artifacts/bundle"


@dataclass(frozen=True)
class Champion:
    """The registered model version that currently holds the ``champion`` alias."""

    version: str
    run_id: str | None
    bundle_dir: Path


def champion_version(model_name: str):  # -> mlflow.entities.model_registry.ModelVersion | None
    """The ModelVersion behind ``model_name@champion``, or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


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


def register_bundle(
    bundle_dir: Path, model_name: str, run_id: str, tags: Mapping[str, str], description: str | None = None
) -> str:
    """Log ``bundle_dir`` as a pyfunc model in ``run_id``, register it and make it champion.

    The version that was champion gets the ``previous`` alias (rollback target). The
    registered copy's ``clazzify.json`` is stamped with the model name and the new version
    (see :func:`stamp_version`).

    Returns:
        the new model version.
    """
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from clazzify.registry.pyfunc import ClazzifyModel

    meta = BundleMeta.load(bundle_dir)
    client = mlflow.MlflowClient()
    old = champion_version(model_name)
    example = np.zeros((1, meta.image_size, meta.image_size, 3), dtype=np.uint8)
    signature = infer_signature(
        example, np.zeros((1, len(meta.class_names)), dtype=np.float32)
    )
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ClazzifyModel(),
            artifacts={"bundle": str(bundle_dir)},
            signature=signature,
            pip_requirements=["clazzify"],
        )
    mv = mlflow.register_model(info.model_uri, model_name, tags=dict(tags))
    if description:
        client.update_model_version(model_name, mv.version, description=description)
    stamp_version(info.model_id, meta, model_name, str(mv.version))
    client.set_registered_model_alias(model_name, CHAMPION, mv.version)
    if old is not None:
        client.set_registered_model_alias(model_name, PREVIOUS, old.version)
    return str(mv.version)


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
