"""The s3:// path against an S3-compatible server (moto) on loopback, over real HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clazzify.core import storage
from clazzify.core.errors import StorageError
from clazzify.core.storage import S3Settings
from clazzify.training.ingest import IngestConfig, ingest_images, read_split_manifest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    client = storage.client()
    if not client.bucket_exists("photos"):
        client.make_bucket("photos")
    return client


def test_ingest_from_bucket_prefix(s3_env, demo_dir: Path, tmp_path: Path):
    for path in sorted(demo_dir.rglob("*")):
        if path.is_file():
            storage.write_bytes(f"s3://photos/uploads/{path.relative_to(demo_dir).as_posix()}", path.read_bytes())
    report = ingest_images("s3://photos/uploads", tmp_path / "m.csv", tmp_path, IngestConfig(seed=2), progress=False)
    assert report.class_names == ["ambiance", "food", "human", "menu"]
    assert report.accepted == 96 and report.duplicates_removed == 1
    assert report.quarantined == {"corrupt": 1, "not_an_image": 1, "too_small": 1}
    rows = read_split_manifest(tmp_path / "m.csv")
    assert all(r.uri.startswith("s3://photos/uploads/") for r in rows)
    for path in sorted(p for p in tmp_path.iterdir() if p.is_file()):
        storage.write_bytes(f"s3://photos/runs/1/{path.name}", path.read_bytes())
    back = storage.download_dir("s3://photos/runs/1", tmp_path / "back")
    assert (back / "m.csv").read_bytes() == (tmp_path / "m.csv").read_bytes()


def test_preflight_names_the_problem(s3_env, s3_server):
    storage.preflight("s3://photos/anything")  # fine
    with pytest.raises(StorageError, match="bucket 'nope' not found"):
        storage.preflight("s3://nope/x")
    dead = S3Settings(endpoint=f"127.0.0.1:{free_port()}", access_key="a", secret_key="b", secure=False)
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        storage.preflight("s3://photos/x", dead)
    anonymous = S3Settings(endpoint=s3_server.removeprefix("http://"), access_key=None, secret_key=None, secure=False)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        storage.preflight("s3://photos/x", anonymous)
    with pytest.raises(StorageError, match="cannot read s3://photos/missing"):
        storage.read_bytes("s3://photos/missing")


def test_init_weights_from_s3(s3_env, tmp_path: Path):
    import numpy as np

    from clazzify.training.models import ModelSpec, build_model
    from clazzify.training.train import fetch_weights

    a = build_model(ModelSpec("compact", num_classes=4, image_size=32))
    a.save_weights(tmp_path / "w.weights.h5")
    storage.write_bytes("s3://photos/weights/w.weights.h5", (tmp_path / "w.weights.h5").read_bytes())
    local = fetch_weights("s3://photos/weights/w.weights.h5", tmp_path / "run")
    b = build_model(ModelSpec("compact", num_classes=4, image_size=32, init_weights=local))
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    from clazzify.core.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot fetch init_weights"):
        fetch_weights("s3://photos/weights/missing.weights.h5", tmp_path / "run")
