"""Component wiring and the whole pipeline on the real KFP local runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clazzify.training.ingest import read_split_manifest
from components.images import PIPELINE_GPU_IMAGE, PIPELINE_IMAGE
from pipelines.train import DEFAULT_PARALLELISM, make_pipeline, parse_overrides, run_local, train_pipeline

pytestmark = pytest.mark.components
ROOT = Path(__file__).resolve().parents[2]

TINY = {"image_size": 32, "architecture": "compact", "epochs": 1, "batch_size": 16, "patience": 0,
        "init_weights": "", "frozen_backbone": False, "min_class_recall": 0.0, "min_class_precision": 0.0}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    from kfp import compiler

    path = tmp_path_factory.mktemp("yaml") / "train.yaml"
    compiler.Compiler().compile(train_pipeline, str(path))
    return next(yaml.safe_load_all(path.read_text()))  # doc 2 is the kubernetes platform spec


def body(compiled: dict) -> dict:
    """The tasks inside the pipeline's exit handler (every step but the handler itself)."""
    handler = compiled["root"]["dag"]["tasks"]["exit-handler-1"]
    return compiled["components"][handler["componentRef"]["name"]]["dag"]["tasks"]


def test_every_step_runs_inside_an_exit_handler_that_records_failures(compiled):
    root = compiled["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "record-outcome"}
    outcome = root["record-outcome"]
    assert outcome["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert outcome["inputs"]["parameters"]["status"] == {
        "taskFinalStatus": {"producerTask": "exit-handler-1"}}


def test_steps_that_talk_to_services_retry_with_backoff(compiled):
    tasks = body(compiled)
    gated = next(t for name, t in tasks.items() if name.startswith("condition"))
    inner = compiled["components"][gated["componentRef"]["name"]]["dag"]["tasks"]
    for task in (tasks["ingest"], inner["register"], inner["deploy"]):
        assert task["retryPolicy"] == {"backoffDuration": "30s", "backoffFactor": 2.0,
                                       "backoffMaxDuration": "300s", "maxRetryCount": 3}
    assert "retryPolicy" not in tasks["train"]  # a failed training is not a hiccup


def test_every_component_runs_in_the_project_image_without_installs(compiled):
    executors = compiled["deploymentSpec"]["executors"]
    assert len(executors) >= 5
    for name, spec in executors.items():
        container = spec["container"]
        assert container["image"] == (PIPELINE_GPU_IMAGE if name == "exec-train" else PIPELINE_IMAGE)
        assert "pip install" not in " ".join(container.get("command", []) + container.get("args", []))


def test_register_runs_only_inside_the_gate(compiled):
    tasks = body(compiled)
    assert {"ingest", "train", "evaluate"} <= set(tasks)
    assert "register" not in tasks
    condition = next(t for name, t in tasks.items() if name.startswith("condition"))
    assert "pass" in condition["triggerPolicy"]["condition"]
    inner = compiled["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert "register" in inner


def test_preprocessing_fans_out_over_the_shards_ingest_returns(compiled):
    tasks = body(compiled)
    loop_name, loop = next((name, t) for name, t in tasks.items() if name.startswith("for-loop"))
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--ingest-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == DEFAULT_PARALLELISM
    assert list(compiled["components"][loop["componentRef"]["name"]]["dag"]["tasks"]) == ["preprocess"]
    assert "preprocess" not in tasks
    # train and evaluate each take the list of every shard's output
    for consumer in ("train", "evaluate"):
        source = tasks[consumer]["inputs"]["artifacts"]["train_data"]["taskOutputArtifact"]
        assert source["producerTask"] == loop_name
        assert source["outputArtifactKey"] == "pipelinechannel--preprocess-train_data"
    ingest_out = compiled["components"]["comp-ingest"]["outputDefinitions"]["parameters"]["Output"]
    assert ingest_out["parameterType"] == "LIST"
    # every shard task may copy the pixels ingest kept; off by default on a cluster (see pixel_cache)
    shard_task = compiled["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["preprocess"]
    assert shard_task["inputs"]["artifacts"]["pixels"]["componentInputArtifact"] == "pipelinechannel--ingest-pixels"
    assert compiled["root"]["inputDefinitions"]["parameters"]["pixel_cache"]["defaultValue"] is False


def test_parallelism_is_set_at_compile_time(tmp_path):
    out = tmp_path / "p3.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.train", "compile", "-o", str(out), "--parallelism", "3"],
                   cwd=Path(__file__).parents[2], check=True, capture_output=True)
    tasks = body(next(yaml.safe_load_all(out.read_text())))
    loop = next(t for name, t in tasks.items() if name.startswith("for-loop"))
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3
    with pytest.raises(ValueError, match="parallelism must be >= 0"):
        make_pipeline(-1)


def _installed_from_this_checkout() -> str | None:
    """Why KFP's CLI cannot be tested here, or None when the project is installed from ROOT."""
    from importlib import metadata

    try:
        dist = metadata.distribution("clazzify")
    except metadata.PackageNotFoundError:
        return "clazzify is not installed (make install)"
    url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if url and url.removeprefix("file://").rstrip("/") != str(ROOT):
        return f"the installed clazzify is another checkout ({url}); reinstall: pip install -e {ROOT}"
    return None


def test_kfp_cli_compiles_the_pipeline_file_from_the_repository_root(tmp_path):
    """A KFP user's first step, `kfp dsl compile --py pipelines/train.py`, imports the file as a
    top-level module: `components` must come from the installed project, not from sys.path."""
    kfp_script = Path(sys.executable).with_name("kfp")
    if not kfp_script.is_file():
        pytest.skip(f"no kfp console script next to {sys.executable}")
    if why := _installed_from_this_checkout():
        pytest.skip(why)
    out = tmp_path / "train.yaml"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what is installed
    # The console script run by this interpreter: its shebang may name another environment.
    done = subprocess.run([sys.executable, str(kfp_script), "dsl", "compile", "--py", "pipelines/train.py",
                           "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "clazzify-train"
    assert {"ingest", "train", "evaluate"} <= set(body(spec))
    assert set(spec["root"]["dag"]["tasks"]) == {"exit-handler-1", "record-outcome"}


@pytest.mark.slow
def test_the_pipeline_file_runs_as_a_script_and_as_a_module(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if why := _installed_from_this_checkout():
        pytest.skip(why)
    for how in (["pipelines/train.py"], ["-m", "pipelines.train"]):
        out = tmp_path / f"{how[0].replace('/', '_')}.yaml"
        done = subprocess.run([sys.executable, *how, "compile", "-o", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "clazzify-train"


def test_every_tunable_is_a_typed_parameter(compiled):
    params = compiled["root"]["inputDefinitions"]["parameters"]
    for name in ("source", "image_size", "architecture", "epochs", "batch_size", "learning_rate",
                 "augment_copies", "shard_size", "min_accuracy", "max_regression", "model_name", "seed"):
        assert name in params
    assert params["epochs"]["parameterType"] == "NUMBER_INTEGER"
    assert params["learning_rate"]["parameterType"] == "NUMBER_DOUBLE"


def test_overrides_are_typed_and_checked():
    assert parse_overrides(("epochs=3", "learning_rate=0.01", "model_name=x")) == {
        "epochs": 3, "learning_rate": 0.01, "model_name": "x"}
    import click

    with pytest.raises(click.BadParameter, match="unknown parameter"):
        parse_overrides(("epoch=3",))
    with pytest.raises(click.BadParameter, match="not a valid int"):
        parse_overrides(("epochs=many",))


@pytest.mark.slow
def test_cli_help_for_every_command():
    for args in (["compile"], ["run"], ["submit"]):
        out = subprocess.run([sys.executable, "-m", "pipelines.train", *args, "--help"], capture_output=True,
                             text=True, cwd=Path(__file__).parents[2], check=True)
        assert "Usage" in out.stdout


@pytest.mark.slow
def test_a_passing_run_shards_registers_and_logs(passing_run):
    import mlflow

    from clazzify.registry.tracking import TrackingConfig, activate
    from clazzify.registry.versions import champion_version

    first = passing_run.summary
    assert first["champion_version"] is not None
    # 96 accepted images in shards of at most 40: three preprocessing tasks in the ParallelFor
    shard_files = sorted(p.name for p in passing_run.run_dir.glob(
        "for-loop-*-iteration-*/preprocess/train_data/train-*.h5"))
    assert shard_files == ["train-00000.h5", "train-00001.h5", "train-00002.h5"]
    # one decode pass: ingest kept each shard's pixels, and every shard task copied all its rows
    assert sorted(p.name for p in (passing_run.run_dir / "ingest" / "pixels").glob("pixels-*.h5")) == [
        "pixels-00000.h5", "pixels-00001.h5", "pixels-00002.h5"]
    summaries = [json.loads(p.read_text()) for p in passing_run.run_dir.glob(
        "for-loop-*-iteration-*/preprocess/train_data/summary-*.json")]
    assert len(summaries) == 3
    assert all(s["from_pixel_cache"] == sum(s["counts"].values()) > 0 for s in summaries)
    manifest = read_split_manifest(passing_run.run_dir / "ingest" / "manifest")
    activate(TrackingConfig(first["tracking_uri"]))
    mv = champion_version("clazzify")
    assert str(mv.version) == str(first["champion_version"])
    assert mv.tags["image_size"] == "32" and mv.tags["class_names"] == "ambiance,food,human,menu"
    assert mv.tags["dataset_fingerprint"] and mv.tags["gate_accuracy"]
    run = mlflow.get_run(mv.run_id)
    assert run.data.tags["gate"] == "passed"
    assert "test_accuracy" in run.data.metrics
    assert run.data.params["train.architecture"] == "efficientnet_lite0"  # the default recipe
    # training read every shard: its row count is the manifest's training split
    assert int(run.data.params["data.train_rows"]) == sum(r.split == "train" for r in manifest)
    assert run.data.params["gate.min_accuracy"] == "0.0"


@pytest.mark.slow
def test_a_failed_gate_leaves_the_champion_where_it_was(passing_run, demo_dir: Path):
    import mlflow

    from clazzify.registry.tracking import TrackingConfig, activate

    before = passing_run.summary["champion_version"]
    second = run_local(str(demo_dir), {**TINY, "epochs": 2, "min_accuracy": 1.0}, passing_run.home)
    assert second["champion_version"] == before  # the champion did not move
    activate(TrackingConfig(passing_run.summary["tracking_uri"]))
    runs = mlflow.search_runs(experiment_names=["clazzify"], order_by=["start_time DESC"])
    latest = runs.iloc[0]
    assert latest["tags.gate"] == "failed"
    assert "min_accuracy" in latest["tags.gate.reasons"]
    assert "champion" in latest["tags.gate.reasons"]  # it was compared with the champion
    assert latest["params.train.architecture"] == "compact"
    client = mlflow.MlflowClient()
    # one loss and one val_accuracy per epoch reached MLflow (the default recipe's
    # frozen-backbone head, in the passing run, has no epochs)
    assert len(client.get_metric_history(latest["run_id"], "loss")) == 2
    assert len(client.get_metric_history(latest["run_id"], "val_accuracy")) == 2


def test_presets_are_valid_parameter_sets():
    from pipelines.train import PRESETS

    assert parse_overrides(PRESETS["original"])["architecture"] == "alexnet"
    assert parse_overrides(PRESETS["original"])["image_size"] == 227
    for values in PRESETS.values():
        parse_overrides(values)  # every key exists and every value has the right type


def test_make_demo_settings_build_a_model():
    """`make demo` sets DEMO_SET over the pipeline's defaults; the mix must be a model that
    can be built (a compact network with the default's packaged weights cannot)."""
    import inspect
    import re

    from clazzify.training.models import ModelSpec
    from clazzify.training.train import TrainConfig

    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    demo_set = re.search(r"^DEMO_SET \?= ((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ")
    defaults = {k: p.default for k, p in inspect.signature(train_pipeline.pipeline_func).parameters.items()}
    params = {**defaults, **parse_overrides(tuple(demo_set.split()))}
    TrainConfig(architecture=params["architecture"], init_weights=params["init_weights"],
                frozen_backbone=params["frozen_backbone"])
    ModelSpec(params["architecture"], num_classes=4, image_size=params["image_size"],
              init_weights=params["init_weights"] or None)
