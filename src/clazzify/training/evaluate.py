"""Evaluate on the test split, compare with the champion, decide the gate.

Writes ``metrics.json``, ``confusion.json``/``confusion.png``, a grid of
misclassified images and ``gate_report.json``/``.md``; logs all of it to the
training run in MLflow and tags the run ``gate=passed|failed``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from clazzify.core.bundle import BundleMeta, Predictor, load_predictor
from clazzify.core.errors import DataError
from clazzify.core.imaging import RESAMPLE
from clazzify.core.ood import rule_of, split_for
from clazzify.registry.tracking import TrackingConfig, activate, flatten_params
from clazzify.training.calibration import expected_calibration_error
from clazzify.training.data import DataDirs, as_paths, read_column, read_rows, split_files
from clazzify.training.export import int8_report
from clazzify.training.gate import Comparison, GateConfig, GateDecision, passes_gate
from clazzify.training.lineage import LINEAGE_ARTIFACT, DatasetLineage, digests, lineage_from_manifest
from clazzify.training.plots import plot_confusion, plot_grid
from clazzify.training.records import read_split_manifest
from clazzify.training.stats import wilson_interval

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
    #: 95% Wilson intervals: what the numbers above say about photos not in this split.
    accuracy_interval: tuple[float, float] = (0.0, 1.0)
    recall_interval: dict[str, tuple[float, float]] = field(default_factory=dict)
    precision_interval: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def flat(self, prefix: str = "test_") -> dict[str, float]:
        """Scalar metrics for MLflow (``test_accuracy``, ``test_recall_food`` ...)."""
        out = {f"{prefix}accuracy": self.accuracy, f"{prefix}ece": self.ece,
               f"{prefix}accuracy_low": self.accuracy_interval[0], f"{prefix}accuracy_high": self.accuracy_interval[1]}
        for name in self.class_names:
            out[f"{prefix}precision_{name}"] = self.precision[name]
            out[f"{prefix}recall_{name}"] = self.recall[name]
            out[f"{prefix}f1_{name}"] = self.f1[name]
        return out


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
        accuracy_interval=wilson_interval(int(tp.sum()), int(len(y_true))),
        recall_interval={n: wilson_interval(int(tp[i]), int(actual[i])) for i, n in enumerate(names)},
        precision_interval={n: wilson_interval(int(tp[i]), int(predicted[i])) for i, n in enumerate(names)},
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
    """Class probabilities and true labels for every row of HDF5 split files (read end to end)."""
    probs, labels, _ = predict_split_scored(predictor, paths, batch_size)
    return probs, labels


def predict_split_scored(
    predictor: Predictor, paths: Path | Sequence[Path], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`predict_split` and each photo's in-distribution score (:func:`clazzify.core.ood.split_for`,
    the server's own computation)."""
    size = predictor.meta.image_size
    raw, labels = [], []
    for images, y in iter_split(paths, batch_size):
        raw.append(predictor.predict(resize_batch(images, size)))
        labels.append(y)
    if not raw:
        raise DataError(f"{', '.join(map(str, as_paths(paths)))} hold(s) no images to evaluate")
    probs, scores, _ = split_for(predictor.meta, np.concatenate(raw))
    return probs, np.concatenate(labels), scores


def ood_summary(meta, probs: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict | None:
    """How the model's unknown rule treats the test split: the share flagged (these are all
    photos of the classes, so every flag is a false one) and the accuracy of the photos left
    unflagged, beside the rule and what training measured of it. None without a rule."""
    rule = rule_of(meta)
    if rule is None:
        return None
    flagged = scores < rule.threshold
    correct = probs.argmax(axis=1) == labels
    lo, hi = wilson_interval(int(flagged.sum()), len(flagged))
    kept = ~flagged
    return {
        "method": rule.method, "threshold": rule.threshold, "false_flag_rate": rule.false_flag_rate,
        "test_flagged": {"flagged": int(flagged.sum()), "n": len(flagged), "rate": float(flagged.mean()),
                         "interval": [lo, hi]},
        "accuracy_unflagged": float(correct[kept].mean()) if kept.any() else None,
        "accuracy_all": float(correct.mean()),
        "trained": rule.measured or {},
    }


def ood_catch_rate(summary: dict | None) -> float | None:
    """The cross-validated share of "not a class" photos caught, when training measured one."""
    return trained_catch_rate((summary or {}).get("trained"))


def trained_catch_rate(measured: dict | None) -> float | None:
    """The same, from what training measured (``OodRule.measured``: a summary's ``trained``,
    or a champion's rule)."""
    cv = (measured or {}).get("cross_validated")
    return float(cv["caught"]["rate"]) if cv else None


def ood_markdown(summary: dict | None, champion: dict | None = None) -> str:
    """The gate report's and model card's section on photos that are none of the classes;
    ``champion`` is the champion's rule (``BundleMeta.ood``), compared when both have a
    cross-validated catch rate."""
    if summary is None:
        return "\n## Unknown uploads\n\nThis model records no unknown rule (trained before it existed).\n"
    t = summary["test_flagged"]
    lines = ["", "## Unknown uploads (none of the classes)", "",
             f"- Rule: `{summary['method']}`; a photo scoring below {summary['threshold']:.4f} is answered "
             f"`unknown`. The threshold flags {summary['false_flag_rate']:.1%} of the validation photos.",
             f"- Test split (all of them photos of the classes): {t['flagged']} of {t['n']} flagged "
             f"({t['rate']:.1%}, 95% interval {t['interval'][0]:.1%}-{t['interval'][1]:.1%}); accuracy "
             + (f"{summary['accuracy_unflagged']:.4f} on the photos left unflagged, " if summary['accuracy_unflagged']
                is not None else "")
             + f"{summary['accuracy_all']:.4f} on all."]
    cv = summary["trained"].get("cross_validated")
    if cv:
        c = cv["caught"]
        lines.append(f"- Training's cross-validation by source ({cv['folds']} folds, {cv['groups']} sources, "
                     f"{cv['outliers']} photos): AUROC {cv['auroc']:.3f}; {c['rate']:.1%} caught "
                     f"(95% interval {c['interval'][0]:.1%}-{c['interval'][1]:.1%}).")
        lines += ["", "| category | caught | photos |", "|---|---:|---:|"]
        lines += [f"| {cat} | {r['rate']:.1%} | {r['n']} |" for cat, r in sorted(cv["per_category"].items())]
        theirs = trained_catch_rate((champion or {}).get("measured"))
        if theirs is not None:
            lines += ["", f"- The champion's cross-validated catch rate: {theirs:.1%} (this model: {c['rate']:.1%})."]
    elif summary["method"] == "msp":
        lines.append("- Training-free score (maximum softmax probability): no photos that are none of the classes "
                     "were given (`ood_source`), so no catch rate is measured; benchmarks/README.md, "
                     "\"Unknown uploads\", gives its rates on the shared OOD photos.")
    return "\n".join(lines) + "\n"


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
    return write_metrics(test_paths, probs, labels, predictor.meta.class_names, out_dir)


def write_metrics(
    test_paths: Sequence[Path], probs: np.ndarray, labels: np.ndarray, names: Sequence[str], out_dir: Path
) -> EvalMetrics:
    """Metrics, confusion matrix and the grid of mistakes of one model's test predictions."""
    names = list(names)
    metrics = compute_metrics(labels, probs, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(metrics.to_json())
    (out_dir / "confusion.json").write_text(
        json.dumps({"class_names": names, "matrix": metrics.confusion}, indent=2)
    )
    plot_confusion(np.array(metrics.confusion), names, out_dir / "confusion.png")
    _misclassified_grid(test_paths, labels, probs, names, out_dir / "misclassified.png")
    return metrics


@dataclass(frozen=True)
class SourceSlice:
    """The test metrics of the photos of one source (where they came from: ``Record.source``).

    ``weak``: the slice's 95% interval lies wholly below the whole split's accuracy, so the
    model is worse on this source than on the rest, beyond what its sample size explains.
    """

    source: str
    n: int
    accuracy: float
    accuracy_interval: tuple[float, float]
    recall: dict[str, float]
    support: dict[str, int]
    weak: bool = False


#: How a photo without a known source is listed in the slice table.
NO_SOURCE = "(unknown)"


def source_slices(
    labels: np.ndarray, probs: np.ndarray, sources: Sequence[str], class_names: Sequence[str]
) -> list[SourceSlice]:
    """Accuracy with its interval, and recall per class, of each source's test photos
    (largest first); empty when no photo names a source."""
    sources = np.asarray([s or NO_SOURCE for s in sources], dtype=object)
    if len(sources) != len(labels):
        raise DataError(f"{len(sources)} sources for {len(labels)} test photos")
    if not len(sources) or set(sources.tolist()) == {NO_SOURCE}:
        return []
    overall = float((probs.argmax(axis=1) == labels).mean())
    out = []
    for name in sorted(set(sources.tolist())):
        mask = sources == name
        m = compute_metrics(labels[mask], probs[mask], class_names)
        out.append(SourceSlice(name, m.n, m.accuracy, m.accuracy_interval,
                               {c: m.recall[c] for c in class_names if m.support[c]},
                               {c: m.support[c] for c in class_names if m.support[c]},
                               weak=m.accuracy_interval[1] < overall))
    return sorted(out, key=lambda s: (-s.n, s.source))


def row_sources(paths: Sequence[Path], manifest: Path) -> list[str]:
    """The source of each row of HDF5 split files, in :func:`iter_split`'s order: each row's
    content hash looked up in ingest's split manifest."""
    by_hash = {r.sha256: r.source for r in read_split_manifest(manifest)}
    return [by_hash.get(h, "") for h in read_column(as_paths(paths), "sha256").tolist()]


def slice_markdown(slices: Sequence[SourceSlice], class_names: Sequence[str]) -> list[str]:
    """The per-source table of the gate report."""
    if not slices:
        return []
    lines = ["", "Per source (a **weak** source's interval lies below the whole split's accuracy):", "",
             "| source | n | accuracy (95% CI) | " + " | ".join(f"recall {c}" for c in class_names) + " |",
             "|---|---:|---:|" + "---:|" * len(class_names)]
    for sl in slices:
        recalls = [f"{sl.recall[c]:.3f} ({sl.support[c]})" if c in sl.recall else "-" for c in class_names]
        name = f"**{sl.source}** (weak)" if sl.weak else sl.source
        accuracy = f"{sl.accuracy:.3f}{_ci(sl.accuracy_interval)}"
        lines.append(f"| {name} | {sl.n} | {accuracy} | " + " | ".join(recalls) + " |")
    return lines


def _ci(interval: tuple[float, float] | None) -> str:
    return f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""


def gate_markdown(decision: GateDecision, metrics: EvalMetrics, slices: Sequence[SourceSlice] = ()) -> str:
    lines = [
        f"# Gate: **{decision.verdict.upper()}**",
        "",
        *[f"- {r}" for r in decision.reasons],
        "",
        "| class | precision (95% CI) | recall (95% CI) | f1 | support |",
        "|---|---:|---:|---:|---:|",
    ]

    for name in metrics.class_names:
        lines.append(
            f"| {name} | {metrics.precision[name]:.3f}{_ci(metrics.precision_interval.get(name))} | "
            f"{metrics.recall[name]:.3f}{_ci(metrics.recall_interval.get(name))} | "
            f"{metrics.f1[name]:.3f} | {metrics.support[name]} |"
        )
    lines += ["", f"accuracy {metrics.accuracy:.4f} (95% Wilson interval {metrics.accuracy_interval[0]:.3f}-"
              f"{metrics.accuracy_interval[1]:.3f}) on {metrics.n} test images, ECE {metrics.ece:.4f}"]
    lines += slice_markdown(slices, metrics.class_names)
    return "\n".join(lines) + "\n"


def data_class_names(paths: Sequence[Path]) -> list[str]:
    """The class names the HDF5 ``labels`` index (the ``class_names`` attribute)."""
    with h5py.File(as_paths(paths)[0], "r") as f:
        return list(json.loads(f.attrs["class_names"]))


def predicted_names(probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Each row's predicted class, by name (what lets two models with different class lists
    be scored on the same photos)."""
    return np.asarray(class_names, dtype=object)[probs.argmax(axis=1)]


@dataclass(frozen=True)
class ComparisonSet:
    """Which test rows champion and challenger are compared on, and why others are left out."""

    mask: np.ndarray  # bool per test row
    seen_by_champion: np.ndarray  # bool per test row
    seen_by_challenger: np.ndarray  # bool per test row
    outside_shared_classes: np.ndarray  # bool per test row
    shared_classes: list[str]


def comparison_set(
    test_sha256: Sequence[str],
    true_names: np.ndarray,
    challenger_classes: Sequence[str],
    champion_classes: Sequence[str],
    champion_data: DatasetLineage | None,
    challenger_data: DatasetLineage | None,
) -> ComparisonSet:
    """The test rows neither model learned from, of classes both models have.

    A row is left out when the champion trained (train or val split) on the photo, or on a
    photo of its near-duplicate group (groups as the challenger's data set draws them, and
    the champion's own group keys), or when the challenger's data set has it in train/val.
    """
    digest = digests(test_sha256)
    seen_champ = np.zeros(len(digest), dtype=bool)
    seen_chall = np.zeros(len(digest), dtype=bool)
    if champion_data is not None:
        champ_seen = champion_data.seen()
        seen_champ = np.isin(digest, champ_seen)
        if challenger_data is not None:
            # a group is tainted when any member, or its key, was learned from by the champion
            tainted = np.union1d(
                challenger_data.group[np.isin(challenger_data.sha, champ_seen)], champion_data.seen_groups()
            )
            row_group = dict(zip(challenger_data.sha.tolist(), challenger_data.group.tolist(), strict=True))
            groups = np.array([row_group.get(d, d) for d in digest.tolist()], dtype=digest.dtype)
            seen_champ |= np.isin(groups, tainted)
    if challenger_data is not None:
        seen_chall = np.isin(digest, challenger_data.seen())
    shared = sorted(set(challenger_classes) & set(champion_classes))
    outside = ~np.isin(true_names.astype(str), shared)
    return ComparisonSet(~seen_champ & ~seen_chall & ~outside, seen_champ, seen_chall, outside, shared)


def compare_models(
    champion: Predictor,
    test_paths: Sequence[Path],
    labels: np.ndarray,
    challenger_probs: np.ndarray,
    challenger_classes: Sequence[str],
    champion_data: DatasetLineage | None,
    challenger_data: DatasetLineage | None,
    out_dir: Path,
) -> Comparison:
    """Score champion and challenger by class name on the test photos neither trained on.

    Writes ``comparison.json``: the counts, the per-class accuracies of both, and the
    content hashes of every compared photo (so anyone can check them against either
    model's training set).
    """
    data_names = data_class_names(test_paths)
    true_names = np.asarray(data_names, dtype=object)[labels.astype(int)]
    sha = read_column(test_paths, "sha256")
    champion_classes = list(champion.meta.class_names)
    chosen = comparison_set(sha, true_names, challenger_classes, champion_classes, champion_data, challenger_data)
    rows = np.flatnonzero(chosen.mask)
    champion_probs = predict_rows(champion, test_paths, rows)
    truth = true_names[rows]
    right_chall = predicted_names(challenger_probs[rows], challenger_classes) == truth
    right_champ = predicted_names(champion_probs, champion_classes) == truth if len(rows) else np.zeros(0, bool)
    comparison = Comparison(
        photos=int(len(rows)),
        challenger_accuracy=float(right_chall.mean()) if len(rows) else 0.0,
        champion_accuracy=float(right_champ.mean()) if len(rows) else 0.0,
        excluded_seen=int((chosen.seen_by_champion & ~chosen.outside_shared_classes).sum()),
        excluded_classes=int(chosen.outside_shared_classes.sum()),
        classes_added=sorted(set(challenger_classes) - set(champion_classes)),
        classes_removed=sorted(set(champion_classes) - set(challenger_classes)),
        champion_lineage=champion_data is not None,
    )
    per_class = {
        name: {
            "photos": int((truth == name).sum()),
            "challenger_accuracy": float(right_chall[truth == name].mean()) if (truth == name).any() else None,
            "champion_accuracy": float(right_champ[truth == name].mean()) if (truth == name).any() else None,
        }
        for name in chosen.shared_classes
    }
    (out_dir / "comparison.json").write_text(json.dumps({
        **asdict(comparison),
        "seen_by_challenger": int(chosen.seen_by_challenger.sum()),
        "per_class": per_class,
        "compared_sha256": sorted(sha[rows].tolist()),
    }, indent=1))
    return comparison


def predict_rows(predictor: Predictor, paths: Sequence[Path], rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities of ``predictor`` for the given rows of HDF5 split files."""
    out = [np.zeros((0, len(predictor.meta.class_names)), dtype=np.float32)]
    for start in range(0, len(rows), batch_size):
        images = read_rows(paths, rows[start : start + batch_size])
        raw = predictor.predict(resize_batch(images, predictor.meta.image_size))
        out.append(split_for(predictor.meta, raw)[0])  # the classes only ("not a class" set aside)
    return np.concatenate(out)


def log_lineage(lineage: DatasetLineage, out_dir: Path, source: str = "") -> None:
    """Write ``lineage/dataset.npz`` + ``dataset.json`` and log them, with an MLflow dataset
    input (digest, per-class counts, manual labels), to the active run."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    folder = out_dir / "lineage"
    lineage.save(folder / "dataset.npz")
    (folder / "dataset.json").write_text(lineage.to_json())
    summary = lineage.summary()
    mlflow.log_artifacts(str(folder), "lineage")
    mlflow.log_input(
        MetaDataset(resolve_dataset_source(source or str(folder / "dataset.npz")), name="photos",
                    digest=summary["digest"]),
        context="training",
        tags={
            "photos": str(summary["photos"]),
            "per_class": json.dumps(summary["per_class"]),
            "manual_labels": str(summary["manual_labels"]),
            "label_sources": json.dumps(summary["label_sources"]),
        },
    )


def model_card(
    metrics: EvalMetrics, decision: GateDecision, lineage: DatasetLineage | None, model_name: str
) -> str:
    """A short Markdown description of the model version: its data, its test metrics per class,
    the gate's decision and the champion comparison (the registry shows it on the version)."""
    lines = [f"# {model_name}: {', '.join(metrics.class_names)}", ""]
    if lineage is not None:
        summary = lineage.summary()
        lines += [
            f"**Data** `{summary['digest']}`: {summary['photos']} photos, "
            f"{summary['manual_labels']} labels given by people "
            f"({', '.join(f'{k} {v}' for k, v in summary['label_sources'].items())}).",
            "",
            "| class | train | val | test |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | " + " | ".join(str(summary["per_split"][s].get(name, 0)) for s in ("train", "val", "test"))
            + " |"
            for name in summary["class_names"]
        ]
        lines.append("")
    low, high = metrics.accuracy_interval
    lines += [
        f"**Test** ({metrics.n} photos): accuracy {metrics.accuracy:.4f} (95% Wilson interval "
        f"{low:.3f}-{high:.3f}), ECE {metrics.ece:.4f}.",
        "",
        "| class | precision (95% CI) | recall (95% CI) | f1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {metrics.precision[n]:.3f}{_ci(metrics.precision_interval.get(n))} | "
        f"{metrics.recall[n]:.3f}{_ci(metrics.recall_interval.get(n))} | {metrics.f1[n]:.3f} | {metrics.support[n]} |"
        for n in metrics.class_names
    ]
    c = decision.comparison
    lines += ["", f"**Gate**: {decision.verdict}."]
    if c is not None:
        lines.append(
            f"Compared with champion v{decision.champion_version} on {c.photos} test photos neither trained on: "
            f"{c.challenger_accuracy:.4f} vs {c.champion_accuracy:.4f}"
            + (f"; class set changed (added {c.classes_added}, removed {c.classes_removed})"
               if c.class_set_changed else "") + "."
        )
    else:
        lines.append("No champion to compare with.")
    lines += [""] + [f"- {r}" for r in decision.reasons]
    return "\n".join(lines) + "\n"


def evaluate_and_gate(
    bundle_dir: Path,
    data_dirs: DataDirs,
    out_dir: Path,
    gate: GateConfig,
    *,
    model_name: str,
    tracking: TrackingConfig | None = None,
    manifest: Path | None = None,
    ingested_at: str = "",
    source: str = "",
) -> tuple[EvalMetrics, GateDecision]:
    """Evaluate the challenger; compare it with the champion on the test photos neither
    trained on, scoring both by class name; decide.

    Args:
        manifest: ingest's split manifest of this run's data set. With it the data set's
            lineage (content hashes, splits, labels and their sources) is written to
            ``lineage/`` and logged to the run, and near-duplicates of the champion's
            training photos are left out of the comparison too.
        ingested_at: when ingest read the source and labels (recorded in the lineage).
        source: where the photos came from (the MLflow dataset's source).

    Raises:
        ConfigError: the gate is mis-set (names an unknown class).
        DataError: the test split is missing or empty.
    """
    test_paths = split_files(data_dirs, "test")  # the gate needs a test split
    predictor = load_predictor(bundle_dir)
    probs, labels, scores = predict_split_scored(predictor, test_paths)
    names = list(predictor.meta.class_names)
    if data_class_names(test_paths) != names:
        raise DataError(
            f"the model's classes {names} are not the test data's {data_class_names(test_paths)}: "
            "evaluate a model on the data set it was trained from"
        )
    metrics = write_metrics(test_paths, probs, labels, names, out_dir)
    gate.check_classes(metrics.class_names)
    lineage = lineage_from_manifest(manifest, ingested_at) if manifest else None
    champion = None
    comparison = None
    if tracking:
        import mlflow

        from clazzify.registry.versions import download_champion, download_run_file

        activate(tracking)
        champion = download_champion(model_name, out_dir / "champion")
        if champion:
            lineage_file = (
                download_run_file(champion.run_id, LINEAGE_ARTIFACT, out_dir / "champion_lineage")
                if champion.run_id else None
            )
            champion_data = DatasetLineage.load(lineage_file) if lineage_file else None
            comparison = compare_models(
                load_predictor(champion.bundle_dir), test_paths, labels, probs, names,
                champion_data, lineage, out_dir,
            )
    ood = ood_summary(predictor.meta, probs, labels, scores)
    champion_rule = BundleMeta.load(champion.bundle_dir).ood if champion else None
    (out_dir / "ood.json").write_text(json.dumps(ood, indent=2))
    decision = passes_gate(
        metrics.accuracy,
        metrics.recall,
        gate,
        champion_version=champion.version if champion else None,
        comparison=comparison,
        precision=metrics.precision,
        ood_catch_rate=ood_catch_rate(ood),
    )
    (out_dir / "gate_report.json").write_text(decision.to_json())
    slices = source_slices(labels, probs, row_sources(test_paths, manifest), names) if manifest else []
    (out_dir / "slices.json").write_text(json.dumps([asdict(sl) for sl in slices], indent=2))
    int8, int8_md = int8_report(predictor.bundle_dir, test_paths, probs, labels)  # int8 vs float32
    (out_dir / "int8.json").write_text(json.dumps(int8, indent=2))
    (out_dir / "gate_report.md").write_text(
        gate_markdown(decision, metrics, slices) + "\n" + int8_md + ood_markdown(ood, champion_rule))
    (out_dir / "model_card.md").write_text(
        model_card(metrics, decision, lineage, model_name) + "\n" + int8_md + ood_markdown(ood))
    if tracking:
        from clazzify.registry.versions import CANDIDATE_FILE, log_candidate

        # Every candidate becomes a logged model with its test metrics linked, passed or not.
        model_id = log_candidate(bundle_dir, tracking.run_id, metrics.flat())
        mlflow.MlflowClient().set_logged_model_tags(
            model_id, {"gate": "passed" if decision.passed else "failed"})
        (out_dir / CANDIDATE_FILE).write_text(json.dumps({"model_id": model_id}))
        with mlflow.start_run(run_id=tracking.run_id):
            mlflow.log_params(flatten_params({"gate": asdict(gate)}))
            mlflow.log_metrics(metrics.flat())
            if int8:
                mlflow.log_metrics({f"int8_test_{k}": int8["test"][k]
                                    for k in ("agreement", "int8_accuracy", "int8_ece")})
            if comparison and comparison.photos:
                mlflow.log_metrics({"champion_compared_accuracy": comparison.champion_accuracy,
                                    "challenger_compared_accuracy": comparison.challenger_accuracy,
                                    "compared_photos": comparison.photos})
            if lineage is not None:
                log_lineage(lineage, out_dir, source)
            names_out = ["metrics.json", "confusion.json", "confusion.png", "misclassified.png",
                         "gate_report.json", "gate_report.md", "model_card.md", "slices.json", "ood.json",
                         "int8.json"]
            if comparison:
                names_out.append("comparison.json")
            for name in names_out:
                mlflow.log_artifact(str(out_dir / name), "evaluation")
            mlflow.set_tags({"gate": "passed" if decision.passed else "failed",
                             "gate.reasons": "; ".join(decision.reasons)[:5000]})
    return metrics, decision
