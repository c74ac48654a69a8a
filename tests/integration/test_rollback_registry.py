"""Rollback on the registry side, against a real MLflow store (SQLite): resolve the
`previous` alias to a storage URI, move `champion` back, refuse a second rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from clazzify.core.errors import ConfigError
from clazzify.rollout import cluster as rollout

pytestmark = pytest.mark.integration


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow
    import mlflow.pyfunc

    from clazzify.registry.tracking import TrackingConfig, activate

    monkeypatch.chdir(tmp_path)
    activate(TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "rollback-test"))

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    client = mlflow.MlflowClient()
    for _ in range(2):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
        mlflow.register_model(info.model_uri, "clazzify-test")
    client.set_registered_model_alias("clazzify-test", "champion", "2")
    client.set_registered_model_alias("clazzify-test", "previous", "1")
    return client


def test_previous_resolves_and_champion_moves_back(registry):
    target = rollout.resolve_version("clazzify-test", "previous", "s3://mlflow")
    assert target.version == "1"
    assert (
        target.storage_uri.startswith("file://")
        and Path(target.storage_uri[7:], "MLmodel").is_file()
    )
    assert rollout.move_champion_back("clazzify-test") == ("1", "2")
    assert str(registry.get_model_version_by_alias("clazzify-test", "champion").version) == "1"
    assert registry.get_model_version("clazzify-test", "2").tags["rolled_back"] == "true"
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        rollout.move_champion_back("clazzify-test")


def test_unknown_version_names_the_fix(registry):
    with pytest.raises(ConfigError, match="no version or alias 'staging'"):
        rollout.resolve_version("clazzify-test", "staging", "s3://mlflow")
