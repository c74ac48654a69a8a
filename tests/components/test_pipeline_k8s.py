"""The compiled pipeline carries its Kubernetes settings: GPU on train, requests and
limits everywhere, MinIO env from a Secret on the tasks that read MinIO, the gate
around register and deploy, caching where inputs are captured, and the images the
Makefile builds. Plus the local run's deploy step: it writes the manifest instead."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from components.images import IMAGES

pytestmark = pytest.mark.components

ROOT = Path(__file__).resolve().parents[2]
S3_TASKS = {"ingest", "preprocess", "train"}


@cache
def compiled(registry: str | None = None) -> tuple[dict, dict]:
    import tempfile

    from pipelines.train import compile_to

    with tempfile.TemporaryDirectory() as tmp:
        path = compile_to(Path(tmp) / "train.yaml", registry)
        spec, platform = list(yaml.safe_load_all(path.read_text()))
    return spec, platform


def executors() -> dict:
    return compiled()[0]["deploymentSpec"]["executors"]


def make_images(registry: str | None = None) -> dict[str, str]:
    cmd = ["make", "-s", "--no-print-directory", "print-images"]
    if registry:
        cmd.append(f"REGISTRY={registry}")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return dict(line.split("\t") for line in out.stdout.splitlines())


def test_train_asks_for_gpus_of_a_parameterised_type():
    res = executors()["exec-train"]["container"]["resources"]
    acc = res["accelerator"]
    assert "pipelinechannel--gpu_count" in acc["resourceCount"]
    assert "pipelinechannel--accelerator_type" in acc["resourceType"]
    platform = compiled()[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in platform[
        "tolerations"
    ]
    # inside the exit handler the pipeline parameter reaches train as a channel
    assert platform["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith(
        "train_node_selector")
    assert executors()["exec-train"]["container"]["image"] == IMAGES["pipeline-gpu"]


def test_every_task_has_cpu_and_memory_requests_and_limits():
    assert set(executors()) == {
        f"exec-{t}" for t in ("ingest", "preprocess", "train", "evaluate", "register", "deploy",
                              "record-outcome")
    }
    for name, ex in executors().items():
        res = ex["container"].get("resources") or {}
        for field in (
            "resourceCpuRequest",
            "resourceCpuLimit",
            "resourceMemoryRequest",
            "resourceMemoryLimit",
        ):
            assert res.get(field), f"{name} has no {field}"


MLFLOW_TASKS = {"ingest", "train", "evaluate", "register", "deploy", "record-outcome"}


def _secrets(cfg: dict) -> dict[str, set[str]]:
    """A task's secrets as env: the pipeline parameter naming each -> its env variables."""
    return {s["secretNameParameter"]["componentInputParameter"].removeprefix("pipelinechannel--"):
            {m["envVar"] for m in s["keyToEnv"]} for s in cfg.get("secretAsEnv", [])}


def test_minio_credentials_come_from_a_secret_on_s3_tasks_only():
    platform = compiled()[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in ("ingest", "preprocess", "train", "evaluate", "register", "deploy"):
        cfg = platform.get(f"exec-{task}", {})
        secrets = _secrets(cfg)
        if task not in S3_TASKS:
            assert "s3_secret" not in secrets, f"{task} needs no S3 keys (MLflow proxies artifacts)"
            continue
        # inside the ParallelFor the pipeline parameter arrives as a loop input
        assert secrets["s3_secret"] == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        (cmap,) = cfg["configMapAsEnv"]
        assert {m["envVar"] for m in cmap["keyToEnv"]} == {"AWS_ENDPOINT_URL", "MINIO_SECURE"}
    for ex in executors().values():
        env = {e["name"] for e in ex["container"].get("env") or []}
        assert not env & {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"}, "no keys as literals"


def test_the_mlflow_login_comes_from_a_secret_on_every_task_that_talks_to_mlflow():
    """MLflow runs its basic-auth app on the cluster: a task without the pipeline's login gets 401."""
    platform = compiled()[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in MLFLOW_TASKS:
        secrets = _secrets(platform.get(f"exec-{task}", {}))
        assert secrets.get("mlflow_secret") == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}, task
    assert "mlflow_secret" not in _secrets(platform.get("exec-preprocess", {}))  # never talks to MLflow
    for ex in executors().values():
        env = {e["name"] for e in ex["container"].get("env") or []}
        assert "MLFLOW_TRACKING_PASSWORD" not in env, "no password as a literal"


def body_tasks() -> dict:
    """The tasks of the pipeline's exit handler: every step but the handler's own."""
    spec = compiled()[0]
    handler = spec["root"]["dag"]["tasks"]["exit-handler-1"]
    return spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]


def gate_task() -> tuple[str, dict]:
    """The name and spec of the gate's dsl.If group among the steps."""
    root = body_tasks()
    return next((name, t) for name, t in root.items() if name.startswith("condition"))


def test_register_and_deploy_run_inside_the_gate():
    root = body_tasks()
    _, gate = gate_task()
    assert gate["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] == 'pass'"
    )
    assert "register" not in root and "deploy" not in root
    inner = compiled()[0]["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    assert set(inner) == {"register", "deploy"}
    assert inner["deploy"]["dependentTasks"] == ["register"]
    assert inner["deploy"]["inputs"]["parameters"]["model_version"]["taskOutputParameter"] == {
        "producerTask": "register",
        "outputParameterKey": "Output",
    }


def test_caching_only_where_inputs_are_captured():
    tasks = body_tasks()
    gate_name, gate_spec = gate_task()
    gate = compiled()[0]["components"][gate_spec["componentRef"]["name"]]["dag"]["tasks"]
    loop = next(t for n, t in tasks.items() if n.startswith("for-loop"))
    shards = compiled()[0]["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    caching = {
        n: t.get("cachingOptions", {}).get("enableCache", False)
        for n, t in {**tasks, **gate, **shards}.items()
        if "componentRef" in t and n != gate_name and not n.startswith("for-loop")
    }
    assert caching == {
        "ingest": False,
        "preprocess": True,
        "train": True,
        "evaluate": False,
        "register": False,
        "deploy": False,
    }


@pytest.mark.parametrize("registry", [None, "registry.example.com:5000/team"])
def test_images_equal_the_makefiles(registry):
    made = make_images(registry)
    spec, _ = compiled(registry)
    used = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert used == {made["pipeline"], made["pipeline-gpu"]}
    serving_default = spec["root"]["inputDefinitions"]["parameters"]["serving_image"][
        "defaultValue"
    ]
    assert serving_default == made["serving"]
    if registry:
        assert all(v.startswith(registry + "/") for v in made.values())


@pytest.mark.slow
def test_local_run_writes_the_deploy_manifest_and_says_so(passing_run):
    log = passing_run.log
    assert "not in a Kubernetes cluster: wrote the InferenceService" in log
    (manifest,) = passing_run.run_dir.rglob("deploy/manifest/inferenceservice.yaml")
    isvc = yaml.safe_load(manifest.read_text())
    assert isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == IMAGES["serving"]
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"].startswith("file://") and env["CLAZZIFY_MODEL_VERSION"] == "1"
    # ... and the canary steps it would take on a cluster, with the pipeline's policy.
    steps = (manifest.parent / "rollout-steps.txt").read_text()
    assert "10% of traffic" in steps and "soak 300s" in steps and "fail the run" in steps
