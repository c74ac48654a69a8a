"""Find likely mislabelled training images: out-of-fold scores + confident learning.

Every training image is scored by a model that never saw it (k-fold over the
training split; the rows of ``train.h5`` are already in random order, so
contiguous row ranges are random folds and reading stays out of core). The
out-of-fold probabilities go to cleanlab's confident-learning filter, which
ranks the images whose given label the model most confidently disputes.

Output: ``label_issues.csv`` in the relabel format (moderators fill
``corrected_label``; ``clazzify relabel-import`` turns it into an ingest
manifest) and ``label_issues.png``, a grid of the top suspects.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from clazzify.core.errors import ConfigError, DataError
from clazzify.core.manifest import RELABEL_FIELDS
from clazzify.training.data import DataDirs, inspect_split, make_dataset, read_column, read_rows, split_files
from clazzify.training.models import ModelSpec, build_model
from clazzify.training.plots import plot_grid


@dataclass(frozen=True)
class LabelIssueConfig:
    """Settings of the label-issue search.

    Attributes:
        folds: k of k-fold (each image is scored by a model trained on the other k-1 folds).
        architecture: network trained per fold.
        epochs: epochs per fold.
        batch_size: batch size.
        learning_rate: Adam learning rate.
        seed: seed of the weights and shuffling.
        grid: suspects shown in the image grid.
        min_trusted_accuracy: below this out-of-fold accuracy the report warns that the
            ranking means little (see :func:`weak_model_warning`).
    """

    folds: int = 5
    architecture: str = "compact"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 2e-3
    seed: int = 42
    grid: int = 36
    min_trusted_accuracy: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_trusted_accuracy <= 1.0:
            raise ConfigError(f"min_trusted_accuracy must be within [0, 1], got {self.min_trusted_accuracy}")
        if not 2 <= self.folds <= 20:
            raise ConfigError(f"folds must be within [2, 20], got {self.folds}")
        if self.epochs < 1 or self.batch_size < 1 or self.grid < 0:
            raise ConfigError("epochs and batch_size must be >= 1 and grid >= 0")


@dataclass
class LabelIssueReport:
    """What the search found."""

    scored: int
    issues: int
    out_of_fold_accuracy: float
    csv: str
    grid: str
    #: set when the out-of-fold models are too weak for the ranking to mean anything
    warning: str = ""


def weak_model_warning(accuracy: float, issues: int, scored: int, min_accuracy: float) -> str:
    """A warning when the out-of-fold accuracy is below ``min_accuracy``, else ``""``.

    Confident learning flags the photos whose label the models confidently dispute; it finds
    label errors only when the models are mostly right. When they get more than
    ``1 - min_accuracy`` of the photos wrong, their own mistakes outnumber the few percent of
    wrong labels a real collection holds, and the top of the ranking is mostly those.
    """
    if accuracy >= min_accuracy:
        return ""
    return (
        f"out-of-fold accuracy {accuracy:.3f} is below {min_accuracy:.2f}: the fold models get "
        f"{1 - accuracy:.0%} of the photos wrong themselves, so most of the {issues} of {scored} "
        "flagged are likely their mistakes, not wrong labels; score with a stronger model "
        "(more --epochs, or a pretrained --architecture) before asking moderators to check them"
    )


def fold_bounds(n: int, folds: int, unit: int = 1) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges, aligned to ``unit`` rows (an image's variants)."""
    items = n // unit
    if items < folds:
        raise DataError(f"{items} training images cannot be split into {folds} folds")
    edges = [round(items * k / folds) * unit for k in range(folds + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def outside(rows: Sequence[int], held_out: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(file, start, stop) segments of every row except the global range ``held_out``,
    for files of ``rows`` rows read end to end."""
    start, stop = held_out
    segments, offset = [], 0
    for i, n in enumerate(rows):
        for a, b in ((offset, min(start, offset + n)), (max(stop, offset), offset + n)):
            if b > a:
                segments.append((i, a - offset, b - offset))
        offset += n
    return segments


def _fit_predict(paths: Sequence[Path], held_out: tuple[int, int], info, cfg: LabelIssueConfig) -> np.ndarray:
    import keras
    import tensorflow as tf

    num_classes = len(info.class_names)
    start, stop = held_out
    segments = outside(info.rows, held_out)

    def one_hot(x, y):
        return x, tf.one_hot(y, num_classes)

    ds = make_dataset(paths, cfg.batch_size, shuffle=True, seed=cfg.seed, segments=segments).map(one_hot)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(ModelSpec(cfg.architecture, num_classes, info.image_size))
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="categorical_crossentropy")
    model.fit(ds, epochs=cfg.epochs, verbose=0, shuffle=False)
    images = read_rows(paths, np.arange(start, stop))
    return np.asarray(model.predict(images, batch_size=cfg.batch_size, verbose=0))


def out_of_fold_probs(
    paths: Sequence[Path], cfg: LabelIssueConfig, *, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities for every row of ``paths`` (read end to end) from models that never saw that row."""
    from tqdm.auto import tqdm

    info = inspect_split(paths)
    labels = read_column(paths, "labels")
    with h5py.File(paths[0], "r") as f:
        copies = int(f.attrs.get("augment_copies", 0))
    probs = np.zeros((info.total, len(info.class_names)), dtype=np.float32)
    for start, stop in tqdm(fold_bounds(info.total, cfg.folds, 1 + copies), desc="folds", disable=not progress):
        probs[start:stop] = _fit_predict(paths, (start, stop), info, cfg)
    return probs, labels


def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's confident-learning filter: (indices of likely issues, worst first; quality per row)."""
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    # n_jobs=1: cleanlab's default forks a multiprocessing.Pool, and a fork from a process
    # that already runs threads (TensorFlow's, tqdm's monitor, a server's) can deadlock the
    # child on a lock copied while held; this filter is a sort over per-image
    # probabilities, so one process is plenty.
    ranked = cl_find(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return np.asarray(ranked, dtype=int), quality


def find_label_issues(
    data_dirs: DataDirs, out_dir: Path, cfg: LabelIssueConfig = LabelIssueConfig(), *, progress: bool = True
) -> LabelIssueReport:
    """Score the training split (``train.h5`` or its shards) out of fold and write the
    suspects for moderators.

    Raises:
        DataError: no training files in ``data_dirs`` or too few images for the folds.
    """
    paths = split_files(data_dirs, "train")
    probs, labels = out_of_fold_probs(paths, cfg, progress=progress)
    uris, variant = read_column(paths, "uris"), read_column(paths, "variant")
    names = list(inspect_split(paths).class_names)
    originals = np.flatnonzero(variant == 0)  # score each photo once, not its augmented copies
    ranked, quality = rank_label_issues(labels[originals], probs[originals])
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "label_issues.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RELABEL_FIELDS)
        writer.writeheader()
        for i in ranked:
            row = originals[i]
            suggested = int(probs[row].argmax())
            writer.writerow({
                "uri": uris[row],
                "label": names[labels[row]],
                "suggested_label": names[suggested],
                "confidence": f"{probs[row, suggested]:.4f}",
                "reason": f"label quality {quality[i]:.4f} (out-of-fold, {cfg.folds} folds)",
                "corrected_label": "",
            })
    shown = [originals[i] for i in ranked[: cfg.grid]]
    images = list(read_rows(paths, np.array(shown, dtype=np.int64))) if shown else []
    titles = [f"{names[labels[r]]} -> {names[int(probs[r].argmax())]} ({probs[r].max():.2f})" for r in shown]
    grid_path = plot_grid(images, titles, out_dir / "label_issues.png")
    accuracy = float((probs[originals].argmax(axis=1) == labels[originals]).mean())
    warning = weak_model_warning(accuracy, len(ranked), len(originals), cfg.min_trusted_accuracy)
    report = LabelIssueReport(len(originals), len(ranked), accuracy, str(csv_path), str(grid_path), warning)
    (out_dir / "label_issues.json").write_text(json.dumps(asdict(report), indent=2))
    return report
