"""The model server's options: what the InferenceService and the image hand it by environment."""

from pathlib import Path

import pytest

from clazzify.serving.server import HOST_ENV, VERSION_ENV, main

pytestmark = pytest.mark.unit


def test_the_version_comes_from_the_environment_the_manifest_sets(monkeypatch):
    monkeypatch.setenv(VERSION_ENV, "7")
    ctx = main.make_context("serve", ["--model-uri", "/mnt/models"])
    assert ctx.params["model_version"] == "7"
    ctx = main.make_context("serve", ["--model-uri", "/mnt/models", "--model-version", "8"])
    assert ctx.params["model_version"] == "8"


def test_without_the_variable_the_server_picks_the_version_itself(monkeypatch):
    monkeypatch.delenv(VERSION_ENV, raising=False)
    assert main.make_context("serve", ["--model-uri", "/mnt/models"]).params["model_version"] is None


def test_the_server_listens_on_loopback_unless_the_image_says_otherwise(monkeypatch):
    monkeypatch.delenv(HOST_ENV, raising=False)
    assert main.make_context("serve", ["--model-uri", "/mnt/models"]).params["host"] == "127.0.0.1"
    monkeypatch.setenv(HOST_ENV, "0.0.0.0")
    assert main.make_context("serve", ["--model-uri", "/mnt/models"]).params["host"] == "0.0.0.0"
    # In a pod the probes and the Service reach the pod's address, so the image sets it.
    dockerfile = Path(__file__).resolve().parents[2] / "serving" / "Dockerfile"
    assert f"ENV {HOST_ENV}=0.0.0.0" in dockerfile.read_text()
