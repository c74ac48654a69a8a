from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from components.images import PIPELINE_GPU_IMAGE


# The CUDA build of TensorFlow (the `gpu` extra); it runs on a CPU-only node too.
@dsl.component(base_image=PIPELINE_GPU_IMAGE, install_kfp_package=False)
def train(
    train_data: Input[list[Dataset]],  # one per preprocessing shard
    architecture: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    init_weights: str,
    label_smoothing: float,
    class_weighting: str,
    frozen_backbone: bool,
    head_l2: float,
    feature_cache: str,
    ood_source: str,
    ood_false_flag_rate: float,
    labels_from: str,
    seed: int,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    accelerator_type: str,
    gpu_count: int,
    cpu: str,
    memory: str,
    model: Output[Model],
    learning_curve: Output[HTML],
) -> NamedTuple("TrainOutputs", [("run_id", str), ("best_val_accuracy", float)]):
    """Train on every HDF5 shard and export the bundle; logs the run to MLflow.

    ``accelerator_type``/``gpu_count``/``cpu``/``memory`` are what the pod asked for, recorded
    on the model artifact (passing them as inputs also carries them into the exit handler's
    sub-DAG, where KFP 2.17's compiler does not carry resource placeholders by itself)."""
    import base64
    from collections import namedtuple
    from pathlib import Path

    from clazzify.registry.tracking import TrackingConfig
    from clazzify.training.train import TrainConfig, train_model

    # Photos moderators marked "not a class" train the "not a class" output (frozen backbone).
    marked = ()
    if labels_from and frozen_backbone:
        from clazzify.scoring.labels import read_not_a_class_marks

        marked = tuple(uri for _, uri in read_not_a_class_marks(labels_from))

    cfg = TrainConfig(
        architecture=architecture, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        patience=patience, init_weights=init_weights or None, seed=seed,
        label_smoothing=label_smoothing, class_weighting=class_weighting,
        frozen_backbone=frozen_backbone, head_l2=head_l2, feature_cache=feature_cache,
        ood_source=ood_source, ood_false_flag_rate=ood_false_flag_rate, ood_marked=marked,
    )
    out = Path(model.path)
    result = train_model(
        [Path(d.path) for d in train_data], out, cfg, tracking=TrackingConfig(mlflow_tracking_uri, mlflow_experiment)
    )
    png = base64.b64encode((out / "learning_curve.png").read_bytes()).decode()
    Path(learning_curve.path).write_text(f'<img src="data:image/png;base64,{png}"/>')
    model.metadata.update({"architecture": architecture, "mlflow_run_id": result.run_id,
                           "requested": {"accelerator_type": accelerator_type,
                                         "gpu_count": gpu_count, "cpu": cpu, "memory": memory}})
    return namedtuple("TrainOutputs", ["run_id", "best_val_accuracy"])(result.run_id, result.best_val_accuracy)
