"""Retries and the exit handler on the real KFP local runner: a flaky step succeeds on its
retry, a failing step's run is recorded in MLflow by the pipeline's own exit-handler
component (what docs/pipeline.md says the local runner does and does not pass on)."""

# No `from __future__ import annotations`: KFP reads the real annotation types.

from pathlib import Path

import pytest
from kfp import dsl, local

from components.record_outcome.component import record_outcome

pytestmark = pytest.mark.components


@dsl.component
def flaky(counter_path: str, fail_times: int) -> str:
    from pathlib import Path

    path = Path(counter_path)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt}: service unavailable")
    return f"ok after {attempt} attempts"


@dsl.component
def register_step(after: str) -> str:
    raise RuntimeError("registry refused the model: quota exceeded")


def _pipeline(fail_after_retry: bool):
    @dsl.pipeline(name="resilience")
    def pipeline(tracking_uri: str, counter_path: str):
        outcome = record_outcome(pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                 mlflow_tracking_uri=tracking_uri,
                                 mlflow_experiment="resilience")
        with dsl.ExitHandler(outcome, name="run"):
            step = flaky(counter_path=counter_path, fail_times=1)
            step.set_retry(num_retries=2, backoff_duration="1s", backoff_factor=2.0)
            if fail_after_retry:
                register_step(after=step.output)

    return pipeline


def _runs(tracking_uri: str):
    import mlflow

    from clazzify.registry.tracking import TrackingConfig, activate

    activate(TrackingConfig(tracking_uri, "resilience"))
    return mlflow.search_runs(experiment_names=["resilience"], output_format="list")


@pytest.mark.slow
def test_a_retried_step_succeeds_and_a_success_is_not_recorded_as_failure(tmp_path: Path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _pipeline(fail_after_retry=False)(tracking_uri=tracking,
                                      counter_path=str(tmp_path / "count"))
    assert (tmp_path / "count").read_text() == "2"  # failed once, retried, succeeded
    assert _runs(tracking) == []


@pytest.mark.slow
def test_a_failed_run_is_recorded_in_mlflow_by_the_exit_handler(tmp_path: Path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=False)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _pipeline(fail_after_retry=True)(tracking_uri=tracking, counter_path=str(tmp_path / "count"))
    (run,) = _runs(tracking)
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["pipeline.state"] == "FAILED"
    # The local runner names the failed group and says only that it failed.
    assert tags["pipeline.failed_task"] and tags["pipeline.error"]


def test_record_pipeline_outcome_keeps_what_the_backend_reports(tmp_path: Path):
    """What KFP's backend passes (the failing task and its error) lands in the tags."""
    import mlflow

    from clazzify.registry.tracking import TrackingConfig, record_pipeline_outcome

    cfg = TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "resilience")
    assert record_pipeline_outcome(cfg, "job-1", state="SUCCEEDED", failed_task="",
                                   error="") is None
    run_id = record_pipeline_outcome(cfg, "job-2", state="FAILED", failed_task="deploy",
                                     error="canary rolled back: p99 3.1x")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FAILED" and run.info.run_name == "pipeline job-2 failed"
    assert run.data.tags["pipeline.failed_task"] == "deploy"
    assert run.data.tags["pipeline.error"] == "canary rolled back: p99 3.1x"
    assert run.data.tags["pipeline_run_id"] == "job-2"
