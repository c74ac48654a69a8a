"""The version the cluster reports is the registry's: render the InferenceService the deploy
step applies, start the server with exactly its command, args and env (the storage
initializer's download emulated by copying STORAGE_URI to a folder), and check that the
answers and the scores a worker writes carry the registered version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving_support import KEY, Client, free_port, v1_body

from clazzify.core.bundle import BundleMeta, find_bundle
from clazzify.rollout import cluster, isvc
from clazzify.scoring.endpoint_client import EndpointClient, EndpointConfig
from clazzify.scoring.scores import ScoreRepository
from clazzify.scoring.worker import Message, process_batch

pytestmark = pytest.mark.integration

SECRETS = {("clazzify-api-keys", "api-keys"): KEY}


@pytest.fixture(scope="module")
def registered(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> cluster.Resolved:
    """tiny_bundle registered twice through register_model, so the champion is version 2."""
    import mlflow

    from clazzify.registry.register import register_model
    from clazzify.registry.tracking import TrackingConfig, activate

    work = tmp_path_factory.mktemp("registry")
    tracking = TrackingConfig(f"sqlite:///{work / 'mlflow.db'}", "version-test")
    activate(tracking)
    report = work / "gate_report.json"
    report.write_text(json.dumps({"verdict": "pass", "challenger_accuracy": 0.9, "reasons": []}))
    for _ in range(2):
        with mlflow.start_run() as run:
            pass
        version = register_model(
            tiny_bundle, report, TrackingConfig(tracking.tracking_uri, tracking.experiment,
                                                run_id=run.info.run_id),
            model_name="clazzify",
        )
    assert version == "2"
    return cluster.resolve_version("clazzify", "champion", "s3://mlflow")


def _env(container: dict, model_dir: Path) -> dict[str, str]:
    """The container's env, secrets resolved; nothing of this process's CLAZZIFY_* leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAZZIFY_")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = SECRETS[(ref["name"], ref["key"])]
    return env


def test_the_server_started_as_the_manifest_says_reports_the_registry_version(
    registered: cluster.Resolved, tmp_path: Path, demo_dir: Path
):
    svc = isvc.inference_service(isvc.InferenceServiceConfig(image="clazzify-serving:test"),
                                 registered.storage_uri, registered.version)
    container = svc["spec"]["predictor"]["containers"][0]
    # The storage initializer: STORAGE_URI -> /mnt/models.
    model_dir = tmp_path / "mnt-models"
    shutil.copytree(registered.storage_uri.removeprefix("file://"), model_dir)
    assert BundleMeta.load(find_bundle(model_dir)).registry_version == registered.version

    command = [sys.executable if part == "python" else part for part in container["command"]]
    args = [str(model_dir) if a == isvc.MODEL_DIR else a for a in container["args"]]
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, *args, "--http-port", str(port),
                                 "--grpc-port", str(free_port())], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(container, model_dir))
    try:
        client = Client(port)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if client.request("GET", "/v2/health/ready", key=None)[0] == 200:
                    break
            except OSError:
                client.close()
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)

        photos = sorted(p for p in demo_dir.glob("food/*.jpg") if "bad" not in p.name)[:3]
        status, body = client.json("POST", "/v1/models/clazzify:predict",
                                   v1_body([photos[0].read_bytes()]))
        assert status == 200, body
        assert body["predictions"][0]["model_version"] == registered.version == "2"

        # A worker scores through the same server: scores land under the registry version.
        repo = ScoreRepository.open(f"sqlite:///{tmp_path / 'scores.db'}")
        endpoint = EndpointClient(EndpointConfig(url=f"http://127.0.0.1:{port}",
                                                 model_name="clazzify", api_key=KEY))
        messages = [Message(json.dumps({"image_id": f"p{i}", "uri": str(p)}).encode())
                    for i, p in enumerate(photos)]
        outcomes = process_batch(messages, endpoint, repo)
        assert [o.status for o in outcomes] == ["scored"] * 3
        assert repo.count_scores("clazzify", "2") == 3
        assert repo.count_scores("clazzify") == 3
        repo.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_folder_bundle_reports_the_version_stamped_at_registration(
    registered: cluster.Resolved, tmp_path: Path
):
    from clazzify.serving.config import parse_model_uri
    from clazzify.serving.engine import fetch_bundle

    model_dir = tmp_path / "mnt-models"
    shutil.copytree(registered.storage_uri.removeprefix("file://"), model_dir)
    _, version, _ = fetch_bundle(parse_model_uri(str(model_dir)))
    assert version == registered.version
