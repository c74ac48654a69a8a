"""Figures people would rather look at than read: learning curves, confusion
matrices, image grids. Matplotlib's Agg backend, PNG files, nothing shown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Accuracy and loss per epoch for train and validation (the original system's graph)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history.get(prefix + metric)
            if values:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, style, label=("validation " if prefix else "train ") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix with counts, rows = true class, columns = predicted."""
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = confusion.max() if confusion.size else 0
    for i in range(n):
        for j in range(n):
            colour = "white" if confusion[i, j] > top / 2 else "black"
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: Path, cols: int = 6) -> Path:
    """A grid of images with a caption each; an empty grid says so."""
    plt = _pyplot()
    count = max(len(images), 1)
    cols = min(cols, count)
    rows = int(np.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not len(images):
        axes[0, 0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    for ax, img, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
