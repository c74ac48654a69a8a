"""Evaluate on the test split, compare with the champion, decide the gate.

Writes ``metrics.json``, ``confusion.json``/``confusion.png``, a grid of
misclassified images and ``gate_report.json``/``.md``; logs all of it to the
training run in MLflow and tags the run ``gate=passed|failed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from clazzify.core.bundle import Predictor, load_predictor
from clazzify.core.errors import DataError
from clazzify.core.imaging import RESAMPLE
from clazzify.registry.tracking import TrackingConfig, activate, flatten_params
from clazzify.training.data import DataDirs, as_paths, read_rows, split_files
from clazzify.training.gate import GateConfig, GateDecision, passes_gate
from clazzify.training.plots import plot_confusion, plot_grid

GRID_MAX = 24


@dataclass(frozen=True)
class EvalMetrics:
    """Test-split metrics of one model."""

    class_names: list[str]
    n: int
    accuracy: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]
    confusion: list[list[int]]
    ece: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def flat(self, prefix: str = "test_") -> dict[str, float]:
        """Scalar metrics for MLflow (``test_accuracy``, ``test_recall_food`` ...)."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}ece": self.ece}
        for name in self.class_names:
            out[f"{prefix}precision_{name}"] = self.precision[name]
            out[f"{prefix}recall_{name}"] = self.recall[name]
            out[f"{prefix}f1_{name}"] = self.f1[name]
        return out


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    if len(y_true) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> EvalMetrics:
    """Accuracy, per-class precision/recall/F1, confusion matrix and ECE."""
    k = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != k or len(y_true) != len(probs):
        raise DataError(f"probabilities {probs.shape} do not match {len(y_true)} labels x {k} classes")
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true.astype(int), y_pred.astype(int)), 1)
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    names = list(class_names)
    return EvalMetrics(
        class_names=names,
        n=int(len(y_true)),
        accuracy=float(tp.sum() / max(len(y_true), 1)),
        precision=dict(zip(names, precision.round(6).tolist(), strict=True)),
        recall=dict(zip(names, recall.round(6).tolist(), strict=True)),
        f1=dict(zip(names, f1.round(6).tolist(), strict=True)),
        support=dict(zip(names, actual.astype(int).tolist(), strict=True)),
        confusion=confusion.tolist(),
        ece=expected_calibration_error(y_true, probs),
    )


def iter_split(paths: Path | Sequence[Path], block_rows: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` in contiguous blocks of each file in turn (out of core)."""
    for path in as_paths(paths):
        with h5py.File(path, "r") as f:
            n = f["images"].shape[0]
            for start in range(0, n, block_rows):
                yield f["images"][start : start + block_rows], f["labels"][start : start + block_rows]


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Resize square uint8 images to ``size`` (for a champion trained at another size)."""
    if images.shape[1] == size:
        return images
    return np.stack(
        [np.asarray(Image.fromarray(img).resize((size, size), RESAMPLE)) for img in images]
    )


def predict_split(
    predictor: Predictor, paths: Path | Sequence[Path], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and true labels for every row of HDF5 split files (read end to end)."""
    size = predictor.meta.image_size
    probs, labels = [], []
    for images, y in iter_split(paths, batch_size):
        probs.append(predictor.predict(resize_batch(images, size)))
        labels.append(y)
    if not probs:
        raise DataError(f"{', '.join(map(str, as_paths(paths)))} hold(s) no images to evaluate")
    return np.concatenate(probs), np.concatenate(labels)


def _misclassified_grid(
    paths: Sequence[Path], labels: np.ndarray, probs: np.ndarray, names: Sequence[str], out: Path
) -> Path:
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    # Most confident mistakes first: the ones a person should look at.
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:GRID_MAX]
    shown = list(read_rows(paths, wrong)) if len(wrong) else []
    titles = [f"{names[labels[i]]} -> {names[pred[i]]} ({probs[i, pred[i]]:.2f})" for i in wrong]
    return plot_grid(shown, titles, out)


def evaluate_model(
    bundle_dir: Path, test_paths: Path | Sequence[Path], out_dir: Path, *, engine: str = "onnx"
) -> EvalMetrics:
    """Evaluate a bundle on an HDF5 test split (one file or its shards); write metrics and
    plots to ``out_dir``."""
    test_paths = as_paths(test_paths)
    predictor = load_predictor(bundle_dir, engine)
    probs, labels = predict_split(predictor, test_paths)
    names = predictor.meta.class_names
    metrics = compute_metrics(labels, probs, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(metrics.to_json())
    (out_dir / "confusion.json").write_text(
        json.dumps({"class_names": names, "matrix": metrics.confusion}, indent=2)
    )
    plot_confusion(np.array(metrics.confusion), names, out_dir / "confusion.png")
    _misclassified_grid(test_paths, labels, probs, names, out_dir / "misclassified.png")
    return metrics


def gate_markdown(decision: GateDecision, metrics: EvalMetrics) -> str:
    lines = [
        f"# Gate: **{decision.verdict.upper()}**",
        "",
        *[f"- {r}" for r in decision.reasons],
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in metrics.class_names:
        lines.append(
            f"| {name} | {metrics.precision[name]:.3f} | {metrics.recall[name]:.3f} | "
            f"{metrics.f1[name]:.3f} | {metrics.support[name]} |"
        )
    lines += ["", f"accuracy {metrics.accuracy:.4f} on {metrics.n} test images, ECE {metrics.ece:.4f}"]
    return "\n".join(lines) + "\n"


def evaluate_and_gate(
    bundle_dir: Path,
    data_dirs: DataDirs,
    out_dir: Path,
    gate: GateConfig,
    *,
    model_name: str,
    tracking: TrackingConfig | None = None,
) -> tuple[EvalMetrics, GateDecision]:
    """Evaluate the challenger, re-evaluate the champion on the same split, decide.

    Raises:
        ConfigError: the gate is mis-set (names an unknown class).
        DataError: the test split is missing or empty.
    """
    test_paths = split_files(data_dirs, "test")  # the gate needs a test split
    metrics = evaluate_model(bundle_dir, test_paths, out_dir)
    gate.check_classes(metrics.class_names)
    champion = None
    champion_metrics = None
    if tracking:
        import mlflow

        from clazzify.registry.versions import download_champion

        activate(tracking)
        champion = download_champion(model_name, out_dir / "champion")
        if champion:
            champion_metrics = evaluate_model(champion.bundle_dir, test_paths, out_dir / "champion_eval")
    decision = passes_gate(
        metrics.accuracy,
        metrics.recall,
        gate,
        champion_accuracy=champion_metrics.accuracy if champion_metrics else None,
        champion_version=champion.version if champion else None,
    )
    (out_dir / "gate_report.json").write_text(decision.to_json())
    (out_dir / "gate_report.md").write_text(gate_markdown(decision, metrics))
    if tracking:
        with mlflow.start_run(run_id=tracking.run_id):
            mlflow.log_params(flatten_params({"gate": asdict(gate)}))
            mlflow.log_metrics(metrics.flat())
            if champion_metrics:
                mlflow.log_metric("champion_test_accuracy", champion_metrics.accuracy)
            for name in ("metrics.json", "confusion.json", "confusion.png", "misclassified.png",
                         "gate_report.json", "gate_report.md"):
                mlflow.log_artifact(str(out_dir / name), "evaluation")
            mlflow.set_tags({"gate": "passed" if decision.passed else "failed",
                             "gate.reasons": "; ".join(decision.reasons)[:5000]})
    return metrics, decision
