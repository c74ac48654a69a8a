"""`clazzify retrain` end to end on the KFP local runner: no champion trains one; nothing new
does nothing; manual labels given since the champion's data set start a run that learns them."""

from __future__ import annotations

import json
import os
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
def test_added_labels_trigger_a_run(tmp_path: Path, passing_run, demo_dir: Path):
    """Starts from the session's pipeline run (a copy of its store, whose champion learned
    demo_dir) instead of training a first champion of its own: one pipeline run, not two."""
    import shutil

    import mlflow

    source = tmp_path / "photos"
    shutil.copytree(demo_dir, source)
    # the trigger counts files by content, and a file ingest quarantines stays new
    for bad in source.rglob("synthetic-bad-*"):
        bad.unlink()
    home = tmp_path / "home"
    shutil.copytree(passing_run.home, home, ignore=shutil.ignore_patterns("kfp"))
    db = f"sqlite:///{tmp_path / 'scores.db'}"
    ScoreRepository.open(db).close()

    quiet, _ = retrain(source, home, db, "--dry-run")
    assert not quiet["retrain"] and quiet["evidence"]["new_photos"] == 0, quiet
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

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it, and it beats --home
    first, _ = retrain(source, tmp_path / "empty-home", db, "--dry-run")
    assert first["retrain"] and "no champion" in first["reason"]


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


def test_checkout_elsewhere_gets_the_paths_as_meant_where_retrain_was_called(tmp_path: Path, monkeypatch):
    """`retrain photos --checkout <repo>` from another folder: the run starts in the checkout,
    so the source, --home, the relabel CSV and a relative SQLite URL reach it absolute (the
    run once looked for <repo>/photos). The checkout here is a scratch one whose
    pipelines/train.py records what it was given and whether the source exists from there."""
    from clazzify.training.demo_data import write_demo_data

    checkout = tmp_path / "repo"
    (checkout / "pipelines").mkdir(parents=True)
    (checkout / "pipelines" / "__init__.py").write_text("")
    (checkout / "pipelines" / "train.py").write_text(
        "import json, sys\nfrom pathlib import Path\n"
        "args = sys.argv[1:]\nsource = args[args.index('--source') + 1]\n"
        "Path('seen.json').write_text(json.dumps({'args': args, 'source_exists': Path(source).is_dir()}))\n")
    here = tmp_path / "elsewhere"
    write_demo_data(here / "photos", per_class=3, size=32, seed=0, bad_files=False)
    (here / "fix.csv").write_text("uri,corrected_label\n")
    ScoreRepository.open(f"sqlite:///{here / 'scores.db'}").close()
    monkeypatch.chdir(here)
    # both thresholds off: every check retrains, and nothing opens an MLflow store (seconds)
    result = CliRunner().invoke(main, ["retrain", "photos", "--home", "home", "--checkout", str(checkout),
                                       "--labels-from", "sqlite:///scores.db", "--relabel-csv", "fix.csv",
                                       "--min-new-photos", "0", "--min-new-labels", "0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    seen = json.loads((checkout / "seen.json").read_text())
    args = seen["args"]
    assert seen["source_exists"] and args[args.index("--source") + 1] == str(here / "photos")
    assert args[args.index("--home") + 1] == str(here / "home")
    assert f"labels_from=sqlite:///{here / 'scores.db'}" in args and f"relabel_csv={here / 'fix.csv'}" in args
