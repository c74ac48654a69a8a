"""`clazzify retrain` end to end on the KFP local runner: no champion trains one; nothing new
does nothing; manual labels given since the champion's data set start a run that learns them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clazzify.cli import main
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository

pytestmark = pytest.mark.components

CHECKOUT = Path(__file__).resolve().parents[2]
TINY = ["image_size=32", "architecture=compact", "init_weights=", "frozen_backbone=false", "epochs=1",
        "batch_size=16", "patience=0", "min_class_recall=0.0", "min_class_precision=0.0", "min_accuracy=0.0",
        "max_regression=1.0"]


def retrain(source: Path, home: Path, db: str, *extra: str) -> tuple[dict, str]:
    args = ["retrain", str(source), "--home", str(home), "--labels-from", db, "--min-new-photos", "50",
            "--min-new-labels", "3", "--checkout", str(CHECKOUT), *extra]
    for s in TINY:
        args += ["--set", s]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = result.output
    return json.loads(text[text.index("{"): text.rindex("}") + 1]), text


@pytest.mark.slow
def test_added_labels_trigger_a_run(tmp_path: Path):
    import mlflow

    from clazzify.training.demo_data import write_demo_data

    source = tmp_path / "photos"
    # no bad files: the trigger counts files by content, and a file ingest quarantines stays new
    write_demo_data(source, per_class=24, size=64, seed=1, bad_files=False)
    home = tmp_path / "home"
    db = f"sqlite:///{tmp_path / 'scores.db'}"
    ScoreRepository.open(db).close()

    first, _ = retrain(source, home, db)
    assert first["retrain"] and "no champion" in first["reason"]
    quiet, _ = retrain(source, home, db, "--dry-run")
    assert not quiet["retrain"] and quiet["evidence"]["new_photos"] == 0
    assert quiet["evidence"]["new_labels"] == 0

    food = sorted((source / "food").glob("*.png"))[:3]
    repo = ScoreRepository.open(db)
    repo.save(Batch(images=[ImageRow(f"i{k}", str(p)) for k, p in enumerate(food)]))
    repo.add_manual_labels([(f"i{k}", "menu") for k in range(3)], labelled_by="moderator")
    repo.close()
    labelled, _ = retrain(source, home, db)
    assert labelled["retrain"] and "3 new manual labels" in labelled["reason"]

    mlflow.set_tracking_uri(f"sqlite:///{(home / 'mlflow.db').resolve()}")
    runs = mlflow.search_runs(experiment_names=["clazzify"], order_by=["start_time DESC"])
    latest = mlflow.MlflowClient().get_run(runs.iloc[0]["run_id"])
    tags = {t.key: t.value for t in latest.inputs.dataset_inputs[0].tags}
    assert tags["manual_labels"] == "3"


def test_the_recurring_pipeline_checks_before_every_step(tmp_path: Path):
    import yaml
    from kfp import compiler

    from pipelines.train import make_pipeline

    path = tmp_path / "daily.yaml"
    compiler.Compiler().compile(make_pipeline(trigger=True), str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    handler = spec["root"]["dag"]["tasks"]["exit-handler-1"]
    root = spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]
    assert set(root) == {"retrain-check", "condition-2"}
    assert "retrain" in root["condition-2"]["triggerPolicy"]["condition"]
    inner = spec["components"][root["condition-2"]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"ingest", "train", "evaluate"} <= set(inner)
    assert any(name.startswith("condition") for name in inner)  # the gate, nested
    assert spec["root"]["inputDefinitions"]["parameters"]["min_new_labels"]["parameterType"] == "NUMBER_INTEGER"
