from kfp import dsl

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def retrain_check(
    source: str,
    labels_from: str,
    min_new_photos: int,
    min_new_labels: int,
    mlflow_tracking_uri: str,
    model_name: str,
) -> str:
    """Decide whether enough is new since the champion's data set; returns 'retrain' or 'skip'."""
    from clazzify.scoring.labels import read_manual_labels
    from clazzify.training.trigger import RetrainPolicy, retrain_check

    decision = retrain_check(source, RetrainPolicy(min_new_photos, min_new_labels), model_name, mlflow_tracking_uri,
                             labels_from=labels_from, read_manual_labels=read_manual_labels, progress=False)
    print(decision.to_json())
    return "retrain" if decision.retrain else "skip"
