"""The model server's options: the version the InferenceService hands it by environment."""

import pytest

from clazzify.serving.server import VERSION_ENV, main

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
