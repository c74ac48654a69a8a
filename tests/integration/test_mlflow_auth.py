"""MLflow as the cluster runs it: the basic-auth app with the manifests' settings
(default_permission NO_PERMISSIONS) and the setup Job's own script making the pipeline
user. Proves: no login, no access; the pipeline user registers and moves `champion`; any
other user can neither read nor move it; the admin can."""

from __future__ import annotations

import base64
import configparser
import os
import subprocess
import sys

import httpx
import pytest

from tests.components.test_manifests import by_kind, render
from tests.integration.serving_support import free_port, stop_process
from tests.integration.worker_support import wait_for

pytestmark = pytest.mark.integration

ADMIN = ("admin", "admin-password-for-the-test")
PIPELINE = ("pipeline", "pipeline-password-for-the-test")
INTRUDER = ("intruder", "intruder-password-for-the-test")


def local_secret(name: str, key: str) -> str:
    (secret,) = [s for s in by_kind(render("local"), "Secret")
                 if s["metadata"]["name"] == name and s["metadata"]["namespace"] == "clazzify"]
    return base64.b64decode(secret["data"][key]).decode()


def setup_job_script() -> str:
    (job,) = by_kind(render("local"), "Job")
    (container,) = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "mlflow-users"]
    return container["args"][0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("flask_wtf", reason="the basic-auth app needs mlflow[auth] (the test extra)")
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    ini = configparser.ConfigParser()
    ini.read_string(local_secret("clazzify-mlflow-auth", "basic_auth.ini"))
    ini["mlflow"]["database_uri"] = f"sqlite:///{tmp / 'auth.db'}"  # PostgreSQL on the cluster
    with (tmp / "basic_auth.ini").open("w") as f:
        ini.write(f)
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret"}
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
         "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--default-artifact-root", str(tmp / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 180, "the MLflow basic-auth server", interval=1)
        yield url
    finally:
        stop_process(proc, 10)
        log.close()


def run_setup_job(url: str) -> str:
    script = setup_job_script().replace("http://mlflow:5000", url)
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1],
           "PIPELINE_USER": PIPELINE[0], "PIPELINE_PASSWORD": PIPELINE[1]}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def as_user(monkeypatch: pytest.MonkeyPatch, url: str, user: tuple[str, str]):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    mlflow.set_tracking_uri(url)
    return mlflow.MlflowClient(url, url)


def test_no_login_no_access(server):
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1",
                 "/api/2.0/mlflow/registered-models/search"):
        assert httpx.get(server + path, timeout=10).status_code == 401
    assert httpx.get(server + path, auth=("admin", "wrong-password-xyz"), timeout=10).status_code == 401


def test_only_the_pipeline_and_the_admin_move_champion(server, monkeypatch: pytest.MonkeyPatch):
    from mlflow.exceptions import MlflowException

    assert "created" in run_setup_job(server)
    assert "password set" in run_setup_job(server)  # the Job is safe to re-run
    from mlflow.server import get_app_client

    as_user(monkeypatch, server, ADMIN)

    get_app_client("basic-auth", tracking_uri=server).create_user(*INTRUDER)

    pipeline = as_user(monkeypatch, server, PIPELINE)
    experiment = pipeline.create_experiment("clazzify-auth-test")
    run = pipeline.create_run(experiment)
    pipeline.create_registered_model("clazzify")
    for _ in range(2):
        pipeline.create_model_version("clazzify", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    pipeline.set_registered_model_alias("clazzify", "champion", "2")
    assert pipeline.get_model_version_by_alias("clazzify", "champion").version == "2"

    intruder = as_user(monkeypatch, server, INTRUDER)
    for attempt in (lambda: intruder.set_registered_model_alias("clazzify", "champion", "1"),
                    lambda: intruder.get_model_version_by_alias("clazzify", "champion"),
                    lambda: intruder.get_experiment(experiment)):
        with pytest.raises(MlflowException) as e:
            attempt()
        assert e.value.get_http_status_code() == 403, e.value

    admin = as_user(monkeypatch, server, ADMIN)
    admin.set_registered_model_alias("clazzify", "champion", "1")
    assert admin.get_model_version_by_alias("clazzify", "champion").version == "1"
