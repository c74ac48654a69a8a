from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    train_data: Input[list[Dataset]],  # one per preprocessing shard; the test split is read
    manifest: Input[Dataset],  # ingest's split manifest: the data set's lineage
    run_id: str,
    model_name: str,
    min_accuracy: float,
    max_regression: float,
    min_class_recall: float,
    min_class_precision: float,
    min_ood_catch_rate: float,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    metrics: Output[Metrics],
    gate_report: Output[Markdown],
    evaluation: Output[Artifact],
) -> str:
    """Evaluate on the test split against the champion; returns the gate verdict."""
    from pathlib import Path

    from clazzify.registry.tracking import TrackingConfig
    from clazzify.training.evaluate import evaluate_and_gate
    from clazzify.training.gate import GateConfig

    gate = GateConfig(min_accuracy=min_accuracy, max_regression=max_regression, min_class_recall=min_class_recall,
                      min_class_precision=min_class_precision, min_ood_catch_rate=min_ood_catch_rate)
    result, decision = evaluate_and_gate(
        Path(model.path) / "bundle", [Path(d.path) for d in train_data], Path(evaluation.path), gate,
        model_name=model_name, tracking=TrackingConfig(mlflow_tracking_uri, mlflow_experiment, run_id=run_id),
        manifest=Path(manifest.path), ingested_at=manifest.metadata.get("ingested_at", ""),
        source=manifest.metadata.get("source", ""),
    )
    for name, value in result.flat().items():
        metrics.log_metric(name, value)
    # the report evaluate_and_gate wrote: the verdict, per-class and per-source tables
    Path(gate_report.path).write_text((Path(evaluation.path) / "gate_report.md").read_text())
    return decision.verdict
