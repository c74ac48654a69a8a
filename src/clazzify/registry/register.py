"""Register: the candidate the evaluation step logged, once the gate passed; move the aliases.

The new version becomes ``champion`` and the version it replaces becomes ``previous``
(the rollback target).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from clazzify.core.bundle import BundleMeta
from clazzify.core.errors import DataError
from clazzify.registry.tracking import TrackingConfig, activate
from clazzify.registry.versions import CANDIDATE_FILE, register_bundle, register_candidate


def git_commit() -> str:
    """The code's commit: ``CLAZZIFY_GIT_COMMIT`` (baked into images) or ``git rev-parse``."""
    env = os.environ.get("CLAZZIFY_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def register_model(
    bundle_dir: Path,
    gate_report: Path,
    tracking: TrackingConfig,
    *,
    model_name: str = "clazzify",
    pipeline_run_id: str = "",
) -> str:
    """Register a gated bundle as the new champion; returns the model version.

    Raises:
        DataError: the gate report is missing or says the gate failed.
    """
    try:
        decision = json.loads(gate_report.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read gate report {gate_report}: {e}") from e
    if decision.get("verdict") != "pass":
        raise DataError(f"refusing to register: gate verdict is {decision.get('verdict')!r}")
    if not tracking.run_id:
        raise DataError("register needs the MLflow run id of the training run")
    meta = BundleMeta.load(bundle_dir)
    tags = {
        "dataset_fingerprint": meta.fingerprint,
        "pipeline_run_id": pipeline_run_id or "unknown",
        "git_commit": git_commit(),
        "architecture": meta.architecture,
        "image_size": str(meta.image_size),
        "class_names": ",".join(meta.class_names),
        "temperature": f"{meta.temperature:.4f}",  # already folded into the model's softmax
        "gate_accuracy": f"{decision['challenger_accuracy']:.6f}",
        "gate_reasons": "; ".join(decision["reasons"])[:5000],
    }
    card = gate_report.with_name("model_card.md")
    description = card.read_text() if card.exists() else None
    activate(tracking)
    candidate = gate_report.parent / CANDIDATE_FILE
    if candidate.is_file():  # the evaluation step logged this candidate: register that one
        model_id = json.loads(candidate.read_text())["model_id"]
        return register_candidate(model_id, model_name, tags, description)
    return register_bundle(bundle_dir, model_name, tracking.run_id, tags, description)
