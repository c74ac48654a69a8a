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
from pipelines.train import DEFAULT_PARALLELISM, make_pipeline, parse_overrides, train_pipeline

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
    for task in (inner["register"], inner["deploy"]):
        assert task["retryPolicy"] == {"backoffDuration": "30s", "backoffFactor": 2.0,
                                       "backoffMaxDuration": "300s", "maxRetryCount": 3}
    assert "retryPolicy" not in tasks["train"]  # a failed training is not a hiccup
    # nor is a mistyped folder: ingest's storage clients retry transient failures themselves
    assert "retryPolicy" not in tasks["ingest"]


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
    with pytest.raises(click.BadParameter, match="not an integer"):
        parse_overrides(("epochs=many",))
    with pytest.raises(click.BadParameter, match="did you mean 'epochs'"):
        parse_overrides(("epoch=3",))


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("False", False), ("1", True), ("0", False),
                                            ("yes", True), ("NO", False)])
def test_booleans_accept_the_six_words(raw, value):
    assert parse_overrides((f"frozen_backbone={raw}",)) == {"frozen_backbone": value}


@pytest.mark.parametrize("raw", ["ture", "", "on", "2", "y"])
def test_any_other_boolean_is_refused(raw):
    import click

    with pytest.raises(click.BadParameter, match="is not a boolean"):
        parse_overrides((f"frozen_backbone={raw}",))


def test_every_parameter_is_in_one_help_group_with_type_and_default():
    from pipelines.params import PARAM_GROUPS, parameters_help
    from pipelines.train import pipeline_parameters

    grouped = [name for names in PARAM_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(pipeline_parameters())  # each once, none missing
    text = parameters_help(pipeline_parameters())
    assert "    epochs                   int    40" in text
    assert "    frozen_backbone          bool   true" in text
    assert "    source                   str    required" in text


# --- Refused before anything runs: one `Error:` line and exit code 2 --------------------
BAD_INPUTS = [
    # (args after `run --local --source DEMO`, what the one line must name)
    (["--set", "frozen_backbone=ture"], ["frozen_backbone='ture'", "true/false"]),
    (["--set", "architecture=resnet"], ["'resnet'", "efficientnet_lite0", "resnet50"]),
    (["--set", "class_weighting=heavy"], ["'heavy'", "balanced"]),
    (["--set", "deployment_mode=Serverles"], ["Serverles", "Knative"]),
    (["--set", "min_accuracy=1.5"], ["min_accuracy=1.5", "[0, 1]"]),
    (["--set", "epoch=3"], ["'epoch'", "did you mean 'epochs'"]),
    (["--set", "epochs=many"], ["epochs='many'", "integer"]),
    (["--set", "init_weights="], ["frozen_backbone needs pretrained weights"]),
    (["--set", "val_fraction=0.6", "--set", "test_fraction=0.5"], ["leaves nothing to train on"]),
    (["--set", "canary_traffic_percent=150"], ["canary_traffic_percent=150"]),
]


def _one_error_line(err: str, out: str, names: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for name in names:
        assert name in lines[0], lines[0]
    assert out == ""


@pytest.mark.parametrize(("args", "names"), BAD_INPUTS)
def test_run_refuses_a_bad_setting_in_one_line(args, names, demo_dir, tmp_path, capsys):
    from pipelines.train import main

    code = main(["run", "--local", "--source", str(demo_dir), "--home", str(tmp_path), *args])
    captured = capsys.readouterr()
    assert code == 2
    _one_error_line(captured.err, captured.out, names)
    assert not (tmp_path / "kfp").exists()  # nothing ran


def test_known_values_come_from_the_package(demo_dir, tmp_path, capsys):
    """The refusal lists the package's own values: a new architecture needs no edit here."""
    from clazzify.training.head import CLASS_WEIGHTING
    from clazzify.training.models import ARCHITECTURES
    from pipelines.train import main

    for key, known in (("architecture", ARCHITECTURES), ("class_weighting", CLASS_WEIGHTING)):
        assert main(["run", "--local", "--source", str(demo_dir), "--home", str(tmp_path), "--set",
                     f"{key}=nonesuch"]) == 2
        _one_error_line(capsys.readouterr().err, "", list(known))


def test_run_refuses_a_missing_source_and_names_the_near_miss(demo_dir, tmp_path, capsys):
    from pipelines.train import main

    typo = str(demo_dir) + "x"
    assert main(["run", "--local", "--source", typo, "--home", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, captured.out, [repr(typo), "does not exist", f"did you mean {str(demo_dir)!r}"])
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert main(["run", "--local", "--source", str(tmp_path / "notes.txt"), "--home", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, captured.out, ["notes.txt", "not a manifest"])


def test_an_s3_source_that_never_answers_is_refused_within_the_timeout(monkeypatch):
    """A server that accepts the connection and says nothing: the check gives up on time."""
    import socket
    import time

    import click

    from pipelines.params import check_source

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        start = time.monotonic()
        with pytest.raises(click.BadParameter, match="no answer from the S3 endpoint within 1 s"):
            check_source("s3://photos/day1", timeout_s=1.0)
        assert time.monotonic() - start < 3


def test_submit_to_an_unreachable_host_is_one_line_naming_it(capsys):
    from pipelines.train import main

    with socket_port() as port:
        host = f"http://127.0.0.1:{port}"
    code = main(["submit", "--host", host, "--set", "source=s3://photos/day1"])
    captured = capsys.readouterr()
    assert code == 2
    _one_error_line(captured.err, captured.out, [f"cannot reach the KFP API at {host}"])


def test_submit_refuses_a_local_source(demo_dir, capsys):
    from pipelines.train import main

    assert main(["submit", "--host", "http://127.0.0.1:1", "--set", f"source={demo_dir}"]) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, captured.out, [str(demo_dir), "s3://"])


def socket_port():
    """A port nothing listens on (bound, then closed when the block ends)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        yield port

    return closed()


@pytest.mark.slow
@pytest.mark.parametrize(("how", "args", "names"), [
    (["-m", "pipelines.train"], ["run", "--local", "--source", "{demo}", "--set", "frozen_backbone=ture"],
     ["'ture'"]),
    (["pipelines/train.py"], ["run", "--local", "--source", "{demo}", "--set", "architecture=resnet"],
     ["'resnet'"]),
    (["-m", "pipelines.train"], ["run", "--local", "--source", "{demo}-typo"], ["does not exist"]),
    (["-m", "pipelines.train"], ["submit", "--host", "http://127.0.0.1:9", "--set", "source=s3://photos/day1"],
     ["cannot reach the KFP API at http://127.0.0.1:9"]),
])
def test_entry_points_refuse_in_one_line_from_a_shell(how, args, names, demo_dir, tmp_path):
    """The same contract through a real process: one `Error:` line on stderr, exit code 2."""
    args = [a.replace("{demo}", str(demo_dir)) for a in args]
    done = subprocess.run([sys.executable, *how, *args, *(["--home", str(tmp_path)] if "run" in args else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    _one_error_line(done.stderr, done.stdout, names)


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
def test_a_failed_gate_exits_3_after_its_reasons_and_leaves_the_champion(passing_run, demo_dir: Path,
                                                                         tmp_path: Path):
    import shutil

    import mlflow

    from clazzify.registry.tracking import TrackingConfig, activate

    before = passing_run.summary["champion_version"]
    # a copy of the passing run's store: other tests (other xdist workers) read the original
    home = tmp_path / "home"
    shutil.copytree(passing_run.home, home, ignore=shutil.ignore_patterns("kfp"))
    sets = [a for k, v in {**TINY, "epochs": 2, "min_accuracy": 1.0}.items() for a in ("--set", f"{k}={v}")]
    done = subprocess.run([sys.executable, "-m", "pipelines.train", "run", "--local", "--source", str(demo_dir),
                           "--home", str(home), *sets], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "Gate: FAILED" in out and "< min_accuracy 1.0000" in out  # the reason, on the console
    assert "Test accuracy: " in out and "95% interval" in out and "Recall per class: ambiance" in out
    assert f"Champion: clazzify version {before} (unchanged, not this run)" in out
    assert "make mlflow-ui" in out and "make serve" in out and "make review" in out
    # the local runner's per-task warnings stay off the console, and are kept in the log
    assert "have no effect in the current local runner" not in done.stdout + done.stderr
    log = Path(out.rsplit("Full log: ", 1)[1].strip()).read_text()
    assert "have no effect in the current local runner" in log
    activate(TrackingConfig(passing_run.summary["tracking_uri"].replace(str(passing_run.home), str(home))))
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


@pytest.mark.slow
def test_a_data_error_in_ingest_fails_once_in_one_line(tmp_path):
    """A source that exists but holds no usable photo: ingest fails at once (no retries after
    30, 60 and 120 s) and the run ends in one line naming the step and the reason, exit 1."""
    import time

    for label in ("food", "menu"):
        (tmp_path / "src" / label).mkdir(parents=True)
        (tmp_path / "src" / label / "note.jpg").write_text("not a photo")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipelines.train", "run", "--local", "--source",
                           str(tmp_path / "src"), "--home", str(tmp_path / "home")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert time.monotonic() - start < 120  # the first retry alone would wait 30 s, all three 210 s
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "step 'ingest' failed: " in errors[0] and "Error: " in errors[0][7:], done.stderr
    print(errors[0])
    (log,) = (tmp_path / "home" / "logs").glob("run-*.log")
    from pipelines.console import ANSI

    assert ANSI.sub("", log.read_text()).count("Executing task 'ingest'") == 1  # one attempt


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
    # the default recipe, as real runs take it: none of its model settings is overridden
    assert not {"architecture", "init_weights", "frozen_backbone", "head_l2"} & set(parse_overrides(
        tuple(demo_set.split())))
    ModelSpec(params["architecture"], num_classes=4, image_size=params["image_size"],
              init_weights=params["init_weights"] or None)
