"""Out-of-distribution scores: how much an upload looks like one of the classes at all.

The classifier's probabilities are calibrated over its classes, which says nothing about
a photo that is none of them (a flower, a screenshot, a flat colour). Each score here
maps a photo to one number, higher meaning "more like the training photos"; a photo is
flagged ``unknown`` when its score falls below a threshold set on in-distribution
validation photos at a target false-flag rate (:func:`threshold_at_false_flag_rate`).

Training-free scores, from what the default recipe already has:

* ``msp``: the maximum softmax probability (Hendrycks & Gimpel 2017);
* ``energy``: ``logsumexp`` of the logits (Liu et al. 2020);
* ``mahalanobis``: minus the smallest Mahalanobis distance to a class mean under one
  shared covariance (Lee et al. 2018), shrunk by Ledoit-Wolf so 1,280 dimensions fit a
  few hundred photos;
* ``knn``: the cosine similarity to the k-th nearest training feature (Sun et al. 2022).

And one trained score, outlier exposure (Hendrycks et al. 2019): photos known to be none
of the classes train a rejection output beside the classes in the same multinomial
logistic regression as the head (:func:`fit_rejection_head`); the score is
``1 - p(reject)`` and the class probabilities are renormalised over the classes alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clazzify.core.errors import ClazzifyError, ConfigError, DataError
from clazzify.core.ood import UNKNOWN  # noqa: F401  (re-exported: the label of a flagged photo)
from clazzify.training.stats import wilson_interval

TRAINING_FREE = ("msp", "energy", "mahalanobis", "knn")
OOD_METHODS = (*TRAINING_FREE, "outlier_exposure")


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]


def msp_score(logits: np.ndarray) -> np.ndarray:
    """The maximum softmax probability of each row of ``logits [N, C]``."""
    return np.exp(logits.max(axis=1) - _logsumexp(logits))


def energy_score(logits: np.ndarray) -> np.ndarray:
    """Minus the free energy, ``logsumexp(logits)``: higher for in-distribution rows."""
    return _logsumexp(np.asarray(logits, np.float64))


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Mahalanobis:
    """Class means and one shared precision matrix (Ledoit-Wolf shrinkage)."""

    means: np.ndarray  # [C, D]
    precision: np.ndarray  # [D, D]

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> Mahalanobis:
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, np.float64)
        classes = np.unique(labels)
        if len(classes) < 1 or len(features) < 2:
            raise DataError("Mahalanobis needs at least two training features")
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        return cls(means, LedoitWolf(assume_centered=True).fit(centred).precision_)

    def score(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float64)
        # d^2(x, m) = x'Px - 2 x'Pm + m'Pm, for every class at once
        xp = x @ self.precision
        d2 = (xp * x).sum(1)[:, None] - 2 * xp @ self.means.T + ((self.means @ self.precision) * self.means).sum(1)
        return -d2.min(axis=1)


@dataclass(frozen=True)
class NearestNeighbours:
    """Cosine similarity to the ``k``-th nearest of the (normalised) training features."""

    bank: np.ndarray  # [N, D], unit rows
    k: int = 10

    @classmethod
    def fit(cls, features: np.ndarray, k: int = 10) -> NearestNeighbours:
        if k < 1 or k > len(features):
            raise ConfigError(f"knn k={k} must be in 1..{len(features)} (the training features)")
        return cls(_l2_normalise(np.asarray(features, np.float32)), k)

    def score(self, features: np.ndarray, block: int = 1024) -> np.ndarray:
        q = _l2_normalise(np.asarray(features, np.float32))
        out = np.empty(len(q), np.float32)
        for start in range(0, len(q), block):
            sims = q[start : start + block] @ self.bank.T
            out[start : start + block] = -np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1]
        return out


def fit_rejection_head(
    features: np.ndarray, labels: np.ndarray, num_classes: int, outliers: np.ndarray, *, l2: float = 10.0,
    outlier_weight: float | None = None, max_iter: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """The head with one more output, "not a class", trained on ``outliers`` (outlier exposure).

    Returns ``(kernel [D, C+1], bias [C+1])``; column ``C`` is the rejection output. The
    outliers weigh, together, as much as an average class unless ``outlier_weight`` (per
    outlier row) says otherwise, so a few hundred of them do not swamp the classes.

    Raises:
        DataError: no outliers, or a class without training rows.
    """
    from sklearn.linear_model import LogisticRegression

    if len(outliers) == 0:
        raise DataError("outlier exposure needs at least one 'not a class' photo")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts[:num_classes] == 0).any():
        raise DataError(f"classes {np.flatnonzero(counts[:num_classes] == 0).tolist()} have no training images")
    x = np.concatenate([features, outliers]).astype(np.float32)
    y = np.concatenate([labels, np.full(len(outliers), num_classes)])
    w = np.ones(len(y), np.float64)
    w[len(labels):] = outlier_weight if outlier_weight is not None else len(labels) / num_classes / len(outliers)
    clf = LogisticRegression(C=1.0 / l2, max_iter=max_iter)
    clf.fit(x, y, sample_weight=w)
    return clf.coef_.T.astype(np.float32), clf.intercept_.astype(np.float32)


def split_rejection(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(class probabilities [N, C] over the classes only, in-distribution score [N])``
    from the logits of a rejection head (last column = "not a class")."""
    logits = np.asarray(logits, np.float64)
    full = np.exp(logits - _logsumexp(logits)[:, None])
    classes = np.exp(logits[:, :-1] - _logsumexp(logits[:, :-1])[:, None])
    return classes, 1.0 - full[:, -1]


def threshold_at_false_flag_rate(in_distribution: np.ndarray, rate: float = 0.02) -> float:
    """The score below which ``rate`` of the in-distribution (validation) photos fall.

    A photo is flagged when its score is strictly below the threshold, so at most
    ``rate`` of the photos the threshold was set on are flagged (fewer where scores tie).

    Raises:
        ConfigError: ``rate`` outside (0, 0.5].
        DataError: no scores.
    """
    if not 0 < rate <= 0.5:
        raise ConfigError(f"false-flag rate must be in (0, 0.5], got {rate}")
    scores = np.sort(np.asarray(in_distribution, np.float64))
    if scores.size == 0:
        raise DataError("no in-distribution scores to set the threshold on")
    # Flag floor(rate * n) photos: the threshold sits midway between the last flagged score
    # and the first kept one, so float32 engines (ONNX, int8) that move a score by 1e-5
    # do not flip the photo the threshold was set beside.
    allowed = int(np.floor(rate * scores.size))
    if scores.size == 1:
        return float(scores[0]) - 1e-6
    if allowed == 0:
        return float(scores[0] - (scores[1] - scores[0]) / 2) if scores[1] > scores[0] else float(scores[0]) - 1e-6
    return float((scores[allowed - 1] + scores[allowed]) / 2)


def auroc(in_distribution: np.ndarray, outliers: np.ndarray) -> float:
    """Probability that an outlier scores below an in-distribution photo (ties count half)."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(in_distribution), np.asarray(outliers)
    if a.size == 0 or b.size == 0:
        raise DataError("AUROC needs in-distribution and outlier scores")
    return float(roc_auc_score(np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a, b]))


def auroc_interval(in_distribution: np.ndarray, outliers: np.ndarray, *, rounds: int = 1000,
                   seed: int = 0, groups: Sequence | None = None) -> tuple[float, float]:
    """A 95% bootstrap interval of :func:`auroc`, resampling each side (outliers by
    ``groups`` when given, e.g. by source, since photos of one source are not independent)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(in_distribution), np.asarray(outliers)
    group_ids = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    values = []
    for _ in range(rounds):
        ai = a[rng.integers(0, a.size, a.size)]
        if group_ids is None:
            bi = b[rng.integers(0, b.size, b.size)]
        else:
            picked = rng.integers(0, group_ids.max() + 1, group_ids.max() + 1)
            bi = np.concatenate([b[group_ids == g] for g in picked])
        values.append(auroc(ai, bi))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def share_flagged(flagged: np.ndarray) -> dict:
    """How many of a boolean mask are flagged (True), with the share's Wilson 95% interval."""
    flagged = np.asarray(flagged, bool)
    k = int(flagged.sum())
    lo, hi = wilson_interval(k, flagged.size)
    return {"flagged": k, "n": int(flagged.size), "rate": k / flagged.size if flagged.size else float("nan"),
            "interval": [lo, hi]}


def flag_rates(scores: np.ndarray, threshold: float) -> dict:
    """:func:`share_flagged` of the ``scores`` below ``threshold``."""
    return share_flagged(np.asarray(scores) < threshold)


def fold_thresholds(val_by_fold: Sequence[np.ndarray], rate: float) -> np.ndarray:
    """Each cross-validation fold's own threshold, set on that fold's validation scores
    (every fold's head has its own scale); index it with the folds of held-out photos."""
    return np.array([threshold_at_false_flag_rate(v, rate) for v in val_by_fold])


def fold_auroc(id_by_fold: Sequence[np.ndarray], held: np.ndarray, fold_of: np.ndarray) -> float:
    """AUROC pooled over cross-validation folds: each fold's in-distribution scores against
    the outliers it held out, weighted by the pairs each fold compares."""
    pairs = [(ids, held[fold_of == f]) for f, ids in enumerate(id_by_fold)]
    return float(np.average([auroc(i, o) for i, o in pairs], weights=[len(i) * len(o) for i, o in pairs]))


SYNTHETIC_KINDS = ("flat", "gradient", "noise", "bars", "text", "interface")


def synthetic_outliers(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 RGB images ``[n, size, size, 3]`` that are none of the classes by
    construction: flat colours, gradients, noise, bar charts, lines of text on paper and
    interface-like boxes, in turn. They teach the rejection output what a graphic looks
    like without any downloaded data; real "not a class" photos teach it the rest."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        kind = SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        img = Image.new("RGB", (size, size), colour if kind != "text" else (245, 245, 240))
        draw = ImageDraw.Draw(img)
        if kind == "gradient":
            a, b = rng.integers(0, 256, (2, 3))
            ramp = np.linspace(0, 1, size)[:, None, None]
            arr = (a + (b - a) * ramp).astype(np.uint8).repeat(size, axis=1)
            img = Image.fromarray(arr if rng.random() < 0.5 else arr.transpose(1, 0, 2).copy())
        elif kind == "noise":
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        elif kind == "bars":
            bars = int(rng.integers(3, 9))
            width = size // (bars + 1)
            for j in range(bars):
                h = int(rng.integers(size // 8, size - 8))
                fill = tuple(int(c) for c in rng.integers(0, 256, 3))
                draw.rectangle([4 + j * width, size - h, 4 + j * width + width - 3, size - 4], fill=fill)
            draw.line([2, size - 3, size - 2, size - 3], fill=(0, 0, 0), width=2)
        elif kind == "text":
            for y in range(6, size - 8, int(rng.integers(7, 14))):
                x_end = int(rng.integers(size // 3, size - 6))
                draw.text((6, y), "".join(chr(int(c)) for c in rng.integers(97, 123, x_end // 6)), fill=(20, 20, 20))
        elif kind == "interface":
            for _ in range(int(rng.integers(3, 10))):
                x0, y0 = (int(v) for v in rng.integers(0, size - 16, 2))
                x1, y1 = x0 + int(rng.integers(12, size - x0)), y0 + int(rng.integers(8, max(9, size // 4)))
                draw.rectangle([x0, y0, min(x1, size - 1), min(y1, size - 1)],
                               fill=tuple(int(c) for c in rng.integers(0, 256, 3)), outline=(0, 0, 0))
        out[i] = np.asarray(img, np.uint8)
    return out


@dataclass
class Outliers:
    """Photos that are none of the classes, decoded for training (``ood_source``)."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    uris: list[str]
    categories: list[str]  # what kind of photo (the manifest's category, or its folder)
    groups: list[str]  # the source each came from (cross-validation never splits one)
    skipped: dict[str, str]  # uri -> why it could not be used


#: Category and source of the photos moderators marked "not a class" (``extra`` below).
MARKED = "moderator marks"


def load_outliers(source: str, image_size: int, *, limit: int = 5000, extra: Sequence[str] = ()) -> Outliers:
    """Read and decode every photo of ``source``: a folder (or ``s3://`` prefix) whose
    sub-folders name categories, or a CSV/JSONL manifest with ``uri`` (or ``file``) and
    optional ``category`` and ``repository`` columns. A ``manifest.csv`` inside a folder is
    read for its ``repository`` column (the groups of cross-validation); without one the
    category folder is the group. ``extra`` URIs (the photos moderators marked "not a
    class") join as category and source :data:`MARKED`; ``source`` may then be ''.
    Undecodable files are skipped with their reason.

    Raises:
        DataError: the source holds no usable photo, or more than ``limit``.
    """
    from clazzify.core import storage
    from clazzify.core.imaging import image_to_array
    from clazzify.core.manifest import is_manifest, read_manifest_rows, resolve_uri

    entries: list[tuple[str, str, str]] = [(uri, MARKED, MARKED) for uri in extra]  # uri, category, group
    if source and is_manifest(source):
        rows = read_manifest_rows(source, required=())
        for row in rows:
            uri = row.get("uri") or resolve_uri(source, row.get("file"))
            if not uri:
                raise DataError(f"{source} line {row.line}: no 'uri' (or 'file') column value")
            category = row.get("category") or "other"
            entries.append((uri, category, row.get("repository") or category))
    elif source:
        base = source.rstrip("/")
        meta: dict[str, str] = {}
        manifest_uri = storage.join(base, "manifest.csv")
        try:
            for row in read_manifest_rows(manifest_uri, required=()):
                if row.get("file") and row.get("repository"):
                    meta[storage.join(base, row.get("file"))] = row.get("repository")
        except ClazzifyError:  # no manifest.csv (or not one with these columns): folders are the groups
            meta = {}
        for uri in storage.list_files(base):
            if uri.endswith((".csv", ".jsonl", ".md", ".txt")):
                continue
            rel = uri[len(base) + 1:]
            category = rel.split("/", 1)[0] if "/" in rel else "other"
            entries.append((uri, category, meta.get(uri, category)))
    if len(entries) > limit:
        raise DataError(f"ood_source {source} lists {len(entries)} photos, over the limit of {limit}: "
                        "sample it or raise the limit")
    images, kept, skipped = [], [], {}
    for uri, category, group in entries:
        try:
            images.append(image_to_array(storage.read_bytes(uri), image_size))
            kept.append((uri, category, group))
        except (ClazzifyError, OSError) as e:  # unreadable or not an image: skipped, reported
            skipped[uri] = str(e)
    if not kept:
        raise DataError(f"ood_source {source} holds no usable photo ({len(skipped)} unreadable)")
    uris, categories, groups = (list(col) for col in zip(*kept, strict=True))
    return Outliers(np.stack(images), uris, categories, groups, skipped)


@dataclass
class OodFit:
    """The head and the unknown rule that training exports."""

    kernel: np.ndarray  # [D, C] or [D, C + 1] (outlier exposure), temperature folded in
    bias: np.ndarray
    temperature: float
    method: str
    threshold: float
    measured: dict


def fit_head_with_ood(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int, *,
    l2: float, rate: float = 0.02, outliers: np.ndarray | None = None, categories: Sequence[str] = (),
    groups: Sequence[str] = (), folds: int = 5, calibrate: bool = True, fit_plain=None,
) -> OodFit:
    """Fit the classifier head and its unknown rule on frozen features.

    With ``outliers`` (features of photos that are none of the classes): outlier exposure,
    a rejection output beside the classes. Its catch rate is first estimated by
    cross-validation with folds grouped by ``groups`` (a source is never both trained on
    and scored), then the head is fitted on every outlier. Without: the plain head
    (``fit_plain(x, y, num_classes)``), and the training-free maximum softmax probability.
    Either way the temperature is fitted on the validation split over the classes, and the
    threshold is set on the validation photos at ``rate``.
    """
    from clazzify.training.calibration import fit_temperature

    def calibrated(kernel, bias, extra: bool):
        logits = x_val @ kernel + bias
        probs = split_rejection(logits)[0] if extra else np.exp(logits - _logsumexp(logits)[:, None])
        t = fit_temperature(probs, y_val) if calibrate else 1.0
        return kernel / t, bias / t, t

    measured: dict = {"false_flag_rate": rate, "val_photos": len(y_val)}
    if outliers is not None and len(outliers):
        from sklearn.model_selection import GroupKFold

        groups = list(groups) or ["all"] * len(outliers)
        n_groups = len(set(groups))
        if n_groups >= 2:
            held = np.empty(len(outliers))
            val_by_fold, fold_of = [], np.empty(len(outliers), int)
            for fold, (tr, ho) in enumerate(GroupKFold(n_splits=min(folds, n_groups)).split(outliers, groups=groups)):
                k, b, _ = calibrated(*fit_rejection_head(x_train, y_train, num_classes, outliers[tr], l2=l2), True)
                val_by_fold.append(split_rejection(x_val @ k + b)[1])
                held[ho] = split_rejection(outliers[ho] @ k + b)[1]
                fold_of[ho] = fold
            caught = held < fold_thresholds(val_by_fold, rate)[fold_of]
            cats = np.asarray(categories if len(categories) else ["other"] * len(outliers))
            measured["cross_validated"] = {
                "folds": len(val_by_fold), "groups": n_groups, "outliers": len(outliers),
                "auroc": fold_auroc(val_by_fold, held, fold_of),
                "caught": share_flagged(caught),
                "per_category": {c: share_flagged(caught[cats == c]) for c in sorted(set(cats))},
            }
        else:
            measured["cross_validated"] = None  # one source: no honest held-out estimate
        kernel, bias, t = calibrated(*fit_rejection_head(x_train, y_train, num_classes, outliers, l2=l2), True)
        scores = split_rejection(x_val @ kernel + bias)[1]
        method = "outlier_exposure"
    else:
        if fit_plain is None:
            raise ConfigError("fit_head_with_ood needs fit_plain without outliers")
        kernel, bias, t = calibrated(*fit_plain(x_train, y_train, num_classes), False)
        scores = msp_score(x_val @ kernel + bias)
        method = "msp"
    threshold = threshold_at_false_flag_rate(scores, rate)
    measured["val_flagged"] = flag_rates(scores, threshold)
    return OodFit(kernel.astype(np.float32), bias.astype(np.float32), float(t), method, threshold, measured)
