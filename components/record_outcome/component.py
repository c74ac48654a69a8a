from kfp import dsl

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def record_outcome(
    status: dsl.PipelineTaskFinalStatus,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
) -> str:
    """The pipeline's exit handler: a failed run's step and reason become an MLflow run."""
    from clazzify.registry.tracking import TrackingConfig, record_pipeline_outcome

    run_id = record_pipeline_outcome(
        TrackingConfig(mlflow_tracking_uri, mlflow_experiment), pipeline_run_id,
        state=status.state, failed_task=status.pipeline_task_name,
        error=status.error_message or "",
    )
    print(f"pipeline {pipeline_run_id}: {status.state}" + (f", recorded in MLflow run {run_id}"
                                                           if run_id else ""))
    return status.state
