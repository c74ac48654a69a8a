"""Where the server gets its model: the MLflow registry (alias, version, run), S3, a folder;
and a hot swap of the champion under load that fails no request."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serving_support import Client, free_port, metric_value, running_server, v1_body

from clazzify.core import storage
from clazzify.core.errors import ConfigError
from clazzify.serving.config import parse_model_uri
from clazzify.serving.engine import content_version, fetch_bundle, load_engine

pytestmark = pytest.mark.integration

V1 = "/v1/models/clazzify:predict"


@pytest.fixture(scope="module")
def registry(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A local MLflow store (SQLite + artifacts folder) holding tiny_bundle as version 1."""
    import mlflow

    from clazzify.registry.tracking import TrackingConfig, activate
    from clazzify.registry.versions import register_bundle

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    activate(TrackingConfig(uri, experiment="serving-test"))

    def register() -> tuple[str, str]:
        with mlflow.start_run() as run:
            pass
        return register_bundle(tiny_bundle, "clazzify", run.info.run_id, {}), run.info.run_id

    version, run_id = register()
    yield {"uri": uri, "register": register, "run_id": run_id, "version": version}


@pytest.fixture
def photos(demo_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(demo_dir.glob("food/*.jpg")) if "synthetic-bad" not in
            p.name][:2]


def test_registry_uris_fetch_the_registered_bundle(registry, tiny_bundle: Path):
    local = content_version(tiny_bundle)
    bundle, version, owned = fetch_bundle(parse_model_uri("models:/clazzify@champion"))
    assert version == registry["version"] and content_version(bundle) == local and owned.is_dir()
    bundle, version, _ = fetch_bundle(parse_model_uri(f"models:/clazzify/{registry['version']}"))
    assert version == registry["version"] and content_version(bundle) == local
    # A run's model is the registered one, stamped with its version at registration.
    bundle, version, _ = fetch_bundle(parse_model_uri(f"runs:/{registry['run_id']}/model"))
    assert version == registry["version"] and content_version(bundle) == local


def test_a_missing_alias_is_a_clear_error(registry):
    with pytest.raises(ConfigError, match="holds alias 'nope'"):
        fetch_bundle(parse_model_uri("models:/clazzify@nope"))


def test_a_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        fetch_bundle(parse_model_uri(str(tmp_path / "missing")))


def test_an_s3_prefix_is_downloaded_and_served(tiny_bundle: Path, monkeypatch, tmp_path: Path):
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        deadline = time.monotonic() + 30
        while True:
            try:
                storage.client().make_bucket("models")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for path in sorted(p for p in tiny_bundle.rglob("*") if p.is_file()):
            storage.write_bytes(f"s3://models/clazzify/v1/{path.relative_to(tiny_bundle).as_posix()}",
                                path.read_bytes())
        engine = load_engine(parse_model_uri("s3://models/clazzify/v1"), "onnx")
        assert engine.version == content_version(tiny_bundle)
        size = engine.meta.image_size
        probs = engine.predict(np.zeros((2, size, size, 3), dtype=np.uint8))
        assert probs.shape == (2, len(engine.meta.class_names))
        assert engine.owned_dir is not None and engine.owned_dir.is_dir()
    finally:
        moto.terminate()
        moto.wait(timeout=20)
        log.close()


def test_the_watched_champion_is_swapped_without_failing_requests(registry, photos,
                                                                  tmp_path: Path):
    args = ["--model-uri", "models:/clazzify@champion", "--watch-alias", "--watch-interval", "0.5",
            "--max-latency-ms", "2"]
    with running_server(args, tmp_path / "server.log",
                        env={"MLFLOW_TRACKING_URI": registry["uri"]}) as port:
        results: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def hammer():
            client = Client(port)
            while not stop.is_set():
                status, out = client.json("POST", V1, v1_body(photos))
                versions = {p["model_version"] for p in out.get("predictions", [])}
                results.append((status, versions.pop() if len(versions) == 1 else None))
            client.close()

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            while len(results) < 10:
                time.sleep(0.05)
            new_version, _ = registry["register"]()
            deadline = time.monotonic() + 60
            while not any(v == new_version for _, v in results):
                assert time.monotonic() < deadline, "the server never swapped to the new champion"
                time.sleep(0.1)
            seen = len(results)
            while len(results) < seen + 10:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        metrics = Client(port, key=None).request("GET", "/metrics")[1].decode()

    statuses = {s for s, _ in results}
    assert statuses == {200}, f"requests failed during the swap: {statuses}"
    versions = [v for _, v in results]
    assert registry["version"] in versions and versions[-1] == new_version
    assert metric_value(metrics, "clazzify_model_swaps_total") == 1.0
    assert metric_value(metrics, "clazzify_model_info", version=new_version) == 1.0
