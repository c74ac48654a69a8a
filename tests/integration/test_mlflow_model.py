"""The MLflow side of a model: every candidate a logged model with its metrics, only a gated
one registered, and the registered model served by plain `mlflow models serve` in the
virtualenv MLflow builds itself, taking base64 images like the model server's V1 endpoint."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from serving_support import free_port

from clazzify.core.bundle import load_predictor
from clazzify.core.errors import ImageError
from clazzify.core.imaging import image_to_array

pytestmark = pytest.mark.integration


@pytest.fixture()
def tracking(tmp_path: Path):
    from clazzify.registry.tracking import TrackingConfig, activate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    activate(TrackingConfig(uri, "mlflow-model-test"))
    return uri


@pytest.fixture(scope="module")
def photos(demo_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(demo_dir.glob("*/*.jpg")) if "bad" not in p.name][:4]


def _b64(photos: list[bytes]) -> list[str]:
    return [base64.b64encode(p).decode() for p in photos]


def test_a_candidate_is_logged_with_metrics_and_registered_only_when_asked(
    tiny_bundle: Path, tracking: str, photos: list[bytes]
):
    import mlflow

    from clazzify.registry.versions import log_candidate, register_candidate

    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        pass
    model_id = log_candidate(tiny_bundle, run.info.run_id, {"test_accuracy": 0.75})
    logged = client.get_logged_model(model_id)
    assert {m.key: m.value for m in logged.metrics} == {"test_accuracy": 0.75}
    assert client.search_model_versions("name='clazzify'") == []

    assert register_candidate(model_id, "clazzify", {}) == "1"
    model = mlflow.pyfunc.load_model("models:/clazzify@champion")
    out = model.predict(pd.DataFrame({"b64": _b64(photos)}))
    predictor = load_predictor(tiny_bundle, "onnx")
    expected = predictor.predict(np.stack([image_to_array(p, predictor.meta.image_size)
                                           for p in photos]))
    np.testing.assert_allclose(out[list(predictor.meta.class_names)].to_numpy(), expected,
                               atol=1e-6)
    assert out["label"].tolist() == [predictor.meta.class_names[k] for k in expected.argmax(1)]
    with pytest.raises(ImageError, match="image 1 is not valid base64"):
        model.predict(pd.DataFrame({"b64": [_b64(photos)[0], "not base64!"]}))


def test_a_candidate_that_fails_the_gate_is_logged_not_registered(
    tiny_bundle: Path, hdf5_dir: Path, tracking: str, tmp_path: Path
):
    import mlflow

    from clazzify.registry.tracking import TrackingConfig
    from clazzify.registry.versions import CANDIDATE_FILE
    from clazzify.training.evaluate import evaluate_and_gate
    from clazzify.training.gate import GateConfig

    with mlflow.start_run() as run:
        pass
    _, decision = evaluate_and_gate(
        tiny_bundle, [hdf5_dir], tmp_path / "eval", GateConfig(min_accuracy=1.0,
                                                               min_class_recall=0.0),
        model_name="clazzify",
        tracking=TrackingConfig(tracking, "mlflow-model-test", run_id=run.info.run_id))
    assert not decision.passed
    model_id = json.loads((tmp_path / "eval" / CANDIDATE_FILE).read_text())["model_id"]
    logged = mlflow.MlflowClient().get_logged_model(model_id)
    assert logged.tags["gate"] == "failed" and logged.source_run_id == run.info.run_id
    assert "test_accuracy" in {m.key for m in logged.metrics}
    assert mlflow.MlflowClient().search_model_versions("name='clazzify'") == []
    # The int8 model's comparison with float32 is in the report, the card and the run.
    for name in ("gate_report.md", "model_card.md"):
        text = (tmp_path / "eval" / name).read_text()
        assert "**int8**" in text and "int8 on the test split" in text, name
    int8 = json.loads((tmp_path / "eval" / "int8.json").read_text())
    assert int8["test"]["photos"] > 0 and "agreement" in int8["validation"]
    run_metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert run_metrics["int8_test_agreement"] == pytest.approx(int8["test"]["agreement"])


@pytest.mark.slow
def test_plain_mlflow_models_serve_builds_its_virtualenv_and_takes_base64(
    tiny_bundle: Path, tracking: str, photos: list[bytes], tmp_path: Path
):
    """The one test that builds MLflow's virtualenv (pip from the package index; minutes
    the first time, cached under ~/.mlflow/envs after)."""
    import mlflow

    from clazzify.registry.versions import register_bundle

    with mlflow.start_run() as run:
        pass
    register_bundle(tiny_bundle, "clazzify", run.info.run_id, {})
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking,
           # the pyenv that MLflow's virtualenv manager uses to find Python
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # the model must bring its own code
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/clazzify@champion",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    import httpx

    try:
        deadline = time.monotonic() + 1200
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(2)
        # The model server's V1 body, unchanged.
        body = {"instances": [{"b64": b} for b in _b64(photos)]}
        resp = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        rows = resp.json()["predictions"]
        predictor = load_predictor(tiny_bundle, "onnx")
        expected = predictor.predict(np.stack([image_to_array(p, predictor.meta.image_size)
                                               for p in photos]))
        got = np.array([[row[c] for c in predictor.meta.class_names] for row in rows])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert "--env-manager local" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
