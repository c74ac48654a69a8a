from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    run_id: str,
    model_name: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
) -> str:
    """Register the gated model in MLflow and move the champion alias to it."""
    from pathlib import Path

    from clazzify.registry.register import register_model
    from clazzify.registry.tracking import TrackingConfig

    return register_model(
        Path(model.path) / "bundle", Path(evaluation.path) / "gate_report.json",
        TrackingConfig(mlflow_tracking_uri, mlflow_experiment, run_id=run_id),
        model_name=model_name, pipeline_run_id=pipeline_run_id,
    )
