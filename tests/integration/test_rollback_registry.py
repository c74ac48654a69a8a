"""Rollback on the registry side, against a real MLflow store (SQLite): resolve the
`previous` alias to a storage URI, move `champion` back, refuse a second rollback; the one
version/alias lookup of clazzify.registry.versions; `rollback --dry-run` without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from clazzify.core.errors import ConfigError
from clazzify.registry import versions
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
            # requirements given: MLflow would otherwise import the model in a subprocess to infer them
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"])
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
    assert versions.move_champion_back("clazzify-test") == ("1", "2")
    assert str(registry.get_model_version_by_alias("clazzify-test", "champion").version) == "1"
    assert registry.get_model_version("clazzify-test", "2").tags["rolled_back"] == "true"
    with pytest.raises(ConfigError, match="nothing to roll back to"):
        versions.move_champion_back("clazzify-test")


def test_unknown_version_names_the_fix(registry):
    with pytest.raises(ConfigError, match="no version or alias 'staging'"):
        rollout.resolve_version("clazzify-test", "staging", "s3://mlflow")
    with pytest.raises(ConfigError, match="has no version 9 .*make demo"):
        rollout.resolve_version("clazzify-test", "9", "s3://mlflow")


def test_one_lookup_takes_versions_and_aliases(registry):
    assert str(versions.find_version("clazzify-test", "champion").version) == "2"
    assert str(versions.find_version("clazzify-test", "1").version) == "1"
    assert versions.find_version("clazzify-test", "staging") is None
    assert versions.find_version("no-such-model", "champion") is None
    assert str(versions.champion_version("clazzify-test").version) == "2"


def test_a_rejected_canary_is_remembered(registry):
    assert versions.canary_rejection("clazzify-test", "2") is None
    versions.reject_canary("clazzify-test", "2", "p99 " + "x" * 6000)
    reason = versions.canary_rejection("clazzify-test", "2")
    assert reason.startswith("p99 ") and len(reason) == 5000


def test_dry_run_says_it_reads_the_cluster(registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No kube-config: one Error line that says the dry run reads the cluster, and no alias moved."""
    from click.testing import CliRunner

    from clazzify.cli import main

    help_text = CliRunner().invoke(main, ["rollback", "--help"]).output
    assert "reads" in help_text and "cluster" in help_text
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    result = CliRunner().invoke(main, ["rollback", "--dry-run", "--model-name", "clazzify-test",
                                       "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: rollback --dry-run reads InferenceService "
                                                   "clazzify/clazzify from the cluster"), lines
    assert "KUBECONFIG" in lines[0] and "Traceback" not in result.output
    assert str(registry.get_model_version_by_alias("clazzify-test", "champion").version) == "2"
