"""The model server's options: what the InferenceService and the image hand it by environment."""

import logging
from pathlib import Path

import click
import pytest

from clazzify.serving.server import HOST_ENV, VERSION_ENV, configure_access_log, main

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


def _access_record(status: int) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it."""
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                             '%s - "%s %s HTTP/%s" %d',
                             ("127.0.0.1:5000", "POST", "/v1/models/m:predict", "1.1", status), None)


@pytest.fixture
def access_logger():
    """``uvicorn.access`` as KServe configures it, restored afterwards."""
    access = logging.getLogger("uvicorn.access")
    saved = access.handlers[:], access.filters[:], access.propagate
    access.handlers = [logging.NullHandler()]
    access.filters = []
    yield access
    access.handlers, access.filters, access.propagate = saved[0], saved[1], saved[2]


@pytest.mark.parametrize(("mode", "kept"), [("all", {200, 401, 500}), ("errors", {401, 500}),
                                            ("off", set())])
def test_access_log_modes_keep_the_lines_they_name(access_logger, mode, kept):
    assert main.make_context("serve", ["--model-uri", "/m", "--access-log", mode]).params[
        "access_log"] == mode
    configure_access_log(mode)
    configure_access_log(mode)  # twice (a reload): still one filter
    assert len(access_logger.filters) == (mode == "errors")
    # uvicorn writes access lines only when the logger has handlers (checked per connection)
    passed = {status for status in (200, 401, 500)
              if access_logger.hasHandlers() and access_logger.filter(_access_record(status))}
    assert passed == kept


def test_the_access_log_defaults_to_errors_and_refuses_other_modes(access_logger):
    assert main.make_context("serve", ["--model-uri", "/m"]).params["access_log"] == "errors"
    with pytest.raises(click.BadParameter):
        main.make_context("serve", ["--model-uri", "/m", "--access-log", "some"])
    with pytest.raises(ValueError, match="one of"):
        configure_access_log("some")
