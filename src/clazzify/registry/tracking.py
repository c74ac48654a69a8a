"""MLflow helpers: where runs go, and a Keras callback that logs each epoch.

The embedded default is a local store under ``.clazzify/`` (SQLite + an
artifacts folder); ``MLFLOW_TRACKING_URI`` overrides it. Entry points resolve
the URI once and pass it down; nothing here runs at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOME = ".clazzify"


def default_tracking_uri(home: Path | str = DEFAULT_HOME) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs home>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(home).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a SQLite store, the artifacts folder beside the database; else None
    (a tracking server decides where artifacts go)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").as_uri()
    return None


@dataclass(frozen=True)
class TrackingConfig:
    """Where a step logs.

    Attributes:
        tracking_uri: MLflow tracking URI.
        experiment: experiment name.
        run_id: continue this run (later steps of a pipeline); None starts one.
        run_name: name of a new run.
    """

    tracking_uri: str
    experiment: str = "clazzify"
    run_id: str | None = None
    run_name: str | None = None


def activate(cfg: TrackingConfig) -> str:
    """Point MLflow at ``cfg`` and make sure the experiment exists; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        exp_id = client.create_experiment(
            cfg.experiment, artifact_location=local_artifact_root(cfg.tracking_uri)
        )
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested config dicts into MLflow params (``train.epochs`` ...)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


def epoch_logger():  # -> keras.callbacks.Callback
    """A Keras callback logging every epoch's metrics to the active MLflow run."""
    import keras
    import mlflow

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            if logs:
                mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)

    return MlflowEpochLogger()


def record_pipeline_outcome(cfg: TrackingConfig, pipeline_run_id: str, *, state: str,
                            failed_task: str, error: str) -> str | None:
    """Record a pipeline run that did not succeed as a FAILED MLflow run named after it,
    tagged with the state, the task KFP names and its error; returns that run's id (None
    when the pipeline succeeded: its training run already tells the story).

    The exit handler calls this with KFP's ``PipelineTaskFinalStatus``; what it names
    depends on the runner (docs/pipeline.md).
    """
    if state == "SUCCEEDED":
        return None
    import mlflow

    activate(cfg)
    tags = {"pipeline_run_id": pipeline_run_id, "pipeline.state": state,
            "pipeline.failed_task": failed_task or "unknown",
            "pipeline.error": (error or "no error message from the runner")[:5000]}
    with mlflow.start_run(run_name=f"pipeline {pipeline_run_id} {state.lower()}",
                          tags=tags) as run:
        pass
    mlflow.MlflowClient().set_terminated(run.info.run_id, status="FAILED")
    return run.info.run_id
