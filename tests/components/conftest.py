"""One full local pipeline run shared by the tests that only read its outputs.

A KFP local run of the whole pipeline takes about a minute on 2 cores, so the tests that
check what a passing run leaves behind (shards, the registered champion and its MLflow
run, the deploy step's manifest and log) read one run instead of starting their own.
The run goes through the command line (``python -m pipelines.train run --local``) with
the default recipe (EfficientNet-Lite0, packaged weights, frozen backbone) at 32 px,
gates that always pass, and shards of at most 40 images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.once import once_per_run

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalRun:
    home: Path  # --home: mlflow.db, mlartifacts/, kfp/
    run_dir: Path  # the run's task outputs under home/kfp
    summary: dict  # what the command printed: tracking_uri, champion_version, gate, ...
    log: str  # the whole log it wrote under home/logs/ (every task's output)


@pytest.fixture(scope="session")
def passing_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    """Made once per test run, also when several xdist workers need it (``once_per_run``)."""
    made = once_per_run(tmp_path_factory, "passing-run", lambda folder: _run_pipeline(demo_dir, folder))
    home = made / "home"
    summary = json.loads((made / "summary.json").read_text())
    # later tests add runs of their own to home/kfp (a failed gate against this champion)
    run_dir = home / "kfp" / (made / "run-dir").read_text()
    return LocalRun(home, run_dir, summary, Path(summary["log"]).read_text())


def _run_pipeline(demo_dir: Path, folder: Path) -> None:
    home = folder / "home"
    sets = {"image_size": 32, "min_accuracy": 0, "min_class_recall": 0, "min_class_precision": 0,
            "shard_size": 40}  # demo_dir's 96 accepted images: three preprocessing tasks
    args = [sys.executable, "-m", "pipelines.train", "run", "--local", "--json", "--source", str(demo_dir),
            "--home", str(home)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "KUBERNETES_"))})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    json.loads(out.stdout)  # --json: stdout is the summary alone, progress on stderr
    (folder / "summary.json").write_text(out.stdout)
    (run_dir,) = (home / "kfp").iterdir()
    (folder / "run-dir").write_text(run_dir.name)
