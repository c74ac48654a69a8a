"""What `run --local` shows (pipelines/console.py): a line per step, the whole log on disk,
the local runner's harmless warnings kept off the console, and the verdict block."""

from __future__ import annotations

import io
import warnings

import pytest

from pipelines.console import RunConsole, is_harmless, local_run_console, verdict_lines

pytestmark = pytest.mark.components

KFP_OUTPUT = """\
14:01:43.483 - INFO - Executing task \x1b[96m'ingest'\x1b[0m
14:01:43.490 - INFO - Streamed logs:

    [KFP Executor 2026-12-02 14:01:43,452 INFO]: Looking for component `ingest`
    {"executor_input": "a wall of JSON"}
    Traceback (most recent call last):
      File "ephemeral_component.py", line 40, in ingest
    clazzify.core.errors.DataError: no class has 2 accepted photos in /data/photos

14:01:50.096 - INFO - Task \x1b[96m'ingest'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
"""


def test_the_console_gets_a_line_per_step_and_the_log_everything():
    log, shown = io.StringIO(), io.StringIO()
    out = RunConsole(log, shown)
    for piece in (KFP_OUTPUT[:50], KFP_OUTPUT[50:]):  # lines arrive in pieces
        out.write(piece)
    assert log.getvalue() == KFP_OUTPUT
    (line,) = shown.getvalue().splitlines()
    assert line.split()[:2] == ["ingest", "failure"] and line.endswith(" s")
    assert out.failed_task == "ingest"
    assert out.failure_reason("ingest") == "DataError: no class has 2 accepted photos in /data/photos"


def test_verbose_streams_every_line():
    log, shown = io.StringIO(), io.StringIO()
    RunConsole(log, shown, verbose=True).write(KFP_OUTPUT)
    assert shown.getvalue() == KFP_OUTPUT


def test_harmless_warnings_stay_in_the_log_and_off_the_console(tmp_path, capsys):
    log_path = tmp_path / "logs" / "run.log"
    with local_run_console(log_path):
        warnings.warn("Task 'ingest': settings ['cpu_limit'] have no effect in the current local runner and "
                      "will be ignored.", UserWarning, stacklevel=1)
        warnings.warn("the champion's lineage is missing", UserWarning, stacklevel=1)
        print("streamed task output")
    captured = capsys.readouterr()
    text = log_path.read_text()
    assert "have no effect in the current local runner" in text and "lineage is missing" in text
    assert "streamed task output" in text
    assert "have no effect" not in captured.err + captured.out
    assert "lineage is missing" in captured.err  # anything else still reaches the console
    assert "streamed task output" not in captured.out  # not a step line


@pytest.mark.parametrize(("message", "category", "filename", "harmless"), [
    ('You may be attemping to run a task that uses custom or non-Python base image "x"', RuntimeWarning,
     "kfp/local/subprocess_task_handler.py", True),
    ("The ``noload`` loader strategy is deprecated", DeprecationWarning,
     "/venv/lib/python3.11/site-packages/mlflow/store/x.py", True),
    ("clazzify.old_name is deprecated", DeprecationWarning, "/repo/src/clazzify/x.py", False),
    ("the test split has 3 photos", UserWarning, "/venv/lib/python3.11/site-packages/sklearn/x.py", False),
])
def test_which_warnings_are_harmless(message, category, filename, harmless):
    assert is_harmless(message, category, filename) is harmless


def test_the_verdict_block_of_a_failed_gate():
    summary = {
        "gate": {"passed": False, "reasons": ["accuracy 0.6000 < min_accuracy 0.9000", "recall 'menu' 0.2 < 0.5"]},
        "metrics": {"n": 40, "accuracy": 0.6, "accuracy_interval": [0.45, 0.74], "class_names": ["food", "menu"],
                    "recall": {"food": 1.0, "menu": 0.2}, "recall_interval": {"food": [0.8, 1.0], "menu": [0.05, 0.5]}},
        "model_name": "clazzify", "champion_version": 4, "registered": False,
        "tracking_uri": "sqlite:////h/mlflow.db", "home_arg": "/h", "log": "/h/logs/run-1.log",
    }
    text = "\n".join(verdict_lines(summary))
    assert "Gate: FAILED\n  - accuracy 0.6000 < min_accuracy 0.9000\n  - recall 'menu' 0.2 < 0.5" in text
    assert "Test accuracy: 0.600 (95% interval 0.450-0.740) on 40 photos" in text
    assert "Recall per class: food 1.00 (0.80-1.00), menu 0.20 (0.05-0.50)" in text
    assert "Champion: clazzify version 4 (unchanged, not this run)" in text
    assert "make mlflow-ui HOME_DIR=/h" in text and "make serve HOME_DIR=/h" in text
    assert text.endswith("Full log: /h/logs/run-1.log")


def test_the_verdict_block_states_the_unknown_rule():
    cv = {"outliers": 168, "auroc": 0.991, "caught": {"rate": 0.881}}
    summary = {
        "gate": {"passed": True, "reasons": []}, "model_name": "clazzify", "champion_version": 1, "registered": True,
        "tracking_uri": "sqlite:////h/mlflow.db", "home_arg": ".clazzify", "log": "l",
        "unknown": {"method": "outlier_exposure", "false_flag_rate": 0.02,
                    "test_flagged": {"flagged": 3, "n": 201, "rate": 3 / 201}, "trained": {"cross_validated": cv}},
    }
    text = "\n".join(verdict_lines(summary))
    assert ("Unknown uploads: outlier_exposure rule, 3 of 201 test photos flagged (1.5%; set for 2% of val); "
            "88.1% of 168 OOD photos caught, cross-validated by source (AUROC 0.991)") in text
