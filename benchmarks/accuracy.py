"""Choose the default training recipe on validation folds; score the test split once.

    python benchmarks/accuracy.py                       # the real photos of ../shared, ~10 min
    python benchmarks/accuracy.py --sizes 224 --repeats 1 --folds 3   # quicker look

What it does, in the pipeline's own code:
1. ``ingest_images`` (seed 42, the pipeline's defaults): validation, de-duplication,
   near-duplicate groups, the train/val/test split. The test split is set aside.
2. ``build_hdf5`` at each input size, and EfficientNet-Lite0 (packaged ImageNet weights)
   features of every photo, cached by pixel digest.
3. Model selection by repeated stratified k-fold over near-duplicate groups of the
   development photos (train + val): in each fold the training part loses a group-held-out
   15% that fits the temperature (as the pipeline's val split does), the head is fit on the
   rest, and the held-out fold is scored. Choices are made in stages on mean fold accuracy
   (ties: mean of the worst class recall): head L2, class weighting, input size (serving
   capacity is not binding: 500k photos a day is 6 a second), then augmentation (the head
   also fitted on mirrored copies of its training photos), which must win by more than the
   fold interval because it doubles feature extraction and so breaks the 3-minute budget.
4. The chosen recipe is trained as the pipeline trains it (train split, temperature on val)
   and scored once on the test split, with Wilson 95% intervals overall and per class.

Writes ``benchmarks/results/accuracy.json`` and prints the markdown table for README.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import PHOTOS, log

from clazzify.training.calibration import apply_temperature, expected_calibration_error, fit_temperature
from clazzify.training.head import FeatureCache, extract_features, fit_head, softmax
from clazzify.training.ingest import IngestConfig, ingest_images, read_split_manifest
from clazzify.training.preprocess import PreprocessConfig, build_hdf5

RESULTS = Path(__file__).resolve().parent / "results"
# A git worktree sits one level deeper than the main checkout; look beside both.
SOURCE = PHOTOS if PHOTOS.is_dir() else Path("/work/shared/datasets/restaurant-photos")
Z95 = 1.959964


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a normal 95% interval over folds."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(Z95 * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


@dataclass
class Dev:
    features: dict[int, np.ndarray]   # image size -> [N, D]
    flipped: dict[int, np.ndarray]    # image size -> features of the mirrored photos (augmentation)
    labels: np.ndarray
    groups: np.ndarray


def fold_scores(dev: Dev, size: int, weighting: str, l2: float, folds: int, repeats: int, k: int,
                flip: bool = False) -> dict:
    """Out-of-fold metrics of one recipe over ``repeats`` x ``folds`` group-stratified folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    x, y, g = dev.features[size], dev.labels, dev.groups
    accs, eces_raw, eces_cal, temps = [], [], [], []
    recalls, precisions = [], []
    pooled = np.zeros((repeats, len(y), k))
    for rep in range(repeats):
        outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=rep)
        for fit_idx, score_idx in outer.split(x, y, g):
            inner = StratifiedGroupKFold(n_splits=7, shuffle=True, random_state=100 + rep)
            head_rel, cal_rel = next(inner.split(x[fit_idx], y[fit_idx], g[fit_idx]))
            head_idx, cal_idx = fit_idx[head_rel], fit_idx[cal_rel]
            if flip:  # the head also learns from the mirrored training photos
                xf = np.concatenate([x[head_idx], dev.flipped[size][head_idx]])
                kernel, bias = fit_head(xf, np.concatenate([y[head_idx]] * 2), k, class_weighting=weighting, l2=l2)
            else:
                kernel, bias = fit_head(x[head_idx], y[head_idx], k, class_weighting=weighting, l2=l2)
            t = fit_temperature(softmax(x[cal_idx] @ kernel + bias), y[cal_idx])
            raw = softmax(x[score_idx] @ kernel + bias)
            cal = apply_temperature(raw, t)
            pooled[rep, score_idx] = cal
            pred = cal.argmax(1)
            yt = y[score_idx]
            accs.append(float((pred == yt).mean()))
            recalls.append([float((pred[yt == c] == c).mean()) for c in range(k)])
            precisions.append([float((yt[pred == c] == c).mean()) if (pred == c).any() else 0.0 for c in range(k)])
            eces_raw.append(expected_calibration_error(yt, raw))
            eces_cal.append(expected_calibration_error(yt, cal))
            temps.append(t)
    correct = int(sum((pooled[r].argmax(1) == y).sum() for r in range(repeats)) / repeats)
    rec, prec = np.asarray(recalls), np.asarray(precisions)
    return {
        "size": size, "class_weighting": weighting, "l2": l2, "flip": flip, "folds": folds, "repeats": repeats,
        "accuracy": mean_ci(accs), "pooled_wilson": wilson(correct, len(y)), "n": len(y),
        "recall": [mean_ci(rec[:, c].tolist()) for c in range(k)],
        "precision": [mean_ci(prec[:, c].tolist()) for c in range(k)],
        "worst_recall": float(rec.mean(0).min()),
        "ece_before": mean_ci(eces_raw), "ece_after": mean_ci(eces_cal),
        "temperature": mean_ci(temps),
    }


def _key(r: dict) -> tuple[float, float]:
    return (round(r["accuracy"][0], 4), r["worst_recall"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(SOURCE))
    parser.add_argument("--sizes", default="224,192,160")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clazzify-accuracy")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    args = parser.parse_args()
    import keras

    from clazzify.training.models import ModelSpec, build_model, feature_model

    sizes = [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "manifest.csv"
    import hashlib
    t0 = time.perf_counter()
    ingest_images(args.source, manifest, args.work / "ingest", IngestConfig(seed=42), progress=False)
    records = read_split_manifest(manifest)
    group_of = {r.uri: r.group for r in records}
    class_names = sorted({r.label for r in records})
    k = len(class_names)
    log(f"ingest: {len(records)} photos, {len({r.group for r in records})} groups ({time.perf_counter() - t0:.0f}s)")

    feats: dict[int, dict[str, np.ndarray]] = {}
    extract_s: dict[int, float] = {}
    labels = groups = None
    for size in sizes:
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]  # a new split, new files
        h5 = args.work / f"h5-{size}-{digest}"
        if not (h5 / "test.h5").is_file():
            build_hdf5(manifest, h5, PreprocessConfig(image_size=size, seed=42), progress=False)
        keras.utils.set_random_seed(0)
        model = build_model(ModelSpec("efficientnet_lite0", k, size, init_weights="packaged", augment=False))
        cache = FeatureCache(args.work / "features", f"efficientnet_lite0-packaged-{size}")
        t = time.perf_counter()
        by_split = {}
        for split in ("train", "val", "test"):
            by_split[split] = extract_features(feature_model(model), [h5 / f"{split}.h5"], cache=cache, progress=False)
        extract_s[size] = time.perf_counter() - t
        feats[size] = {s: v[0] for s, v in by_split.items()} | {f"y_{s}": v[1] for s, v in by_split.items()}
        import h5py

        uris = []
        for split in ("train", "val"):
            with h5py.File(h5 / f"{split}.h5") as f:
                uris += [u.decode() if isinstance(u, bytes) else u for u in f["uris"][:]]
        g = np.array([group_of[u] for u in uris])
        y = np.concatenate([feats[size]["y_train"], feats[size]["y_val"]])
        if labels is not None and not (np.array_equal(labels, y) and np.array_equal(groups, g)):
            raise SystemExit("HDF5 row order differs between sizes")
        labels, groups = y, g
        log(f"{size}px: features of {sum(len(v[1]) for v in by_split.values())} photos in {extract_s[size]:.0f}s")
        if size == sizes[0]:  # mirrored photos, for the augmentation stage
            fm = feature_model(model)

            def mirrored(images, training=False, fm=fm):
                return fm(images[:, :, ::-1], training=training)

            flip_cache = FeatureCache(args.work / "features", f"efficientnet_lite0-packaged-{size}-hflip")
            flipped = {size: np.concatenate([
                extract_features(mirrored, [h5 / f"{split}.h5"], cache=flip_cache, progress=False)[0]
                for split in ("train", "val")])}

    dev = Dev({s: np.concatenate([feats[s]["train"], feats[s]["val"]]) for s in sizes}, flipped, labels, groups)
    rows: list[dict] = []

    def run(size: int, weighting: str, l2: float, flip: bool = False) -> dict:
        t = time.perf_counter()
        r = fold_scores(dev, size, weighting, l2, args.folds, args.repeats, k, flip=flip)
        r["fit_seconds_per_fold"] = (time.perf_counter() - t) / (args.folds * args.repeats)
        rows.append(r)
        log(f"{size}px {weighting:8s} l2={l2:<5g} flip={flip:d} acc {r['accuracy'][0]:.4f}±{r['accuracy'][1]:.4f} "
            f"worst recall {r['worst_recall']:.3f} ECE {r['ece_before'][0]:.3f}->{r['ece_after'][0]:.3f}")
        return r

    size0 = sizes[0]
    best = max((run(size0, "none", l2) for l2 in (0.1, 1.0, 10.0)), key=_key)
    best = max([best] + [run(size0, w, best["l2"]) for w in ("balanced", "sqrt")], key=_key)
    best = max([best] + [run(s, best["class_weighting"], best["l2"]) for s in sizes[1:]], key=_key)
    if best["size"] == size0:
        # Mirrored copies double feature extraction, which breaks the pipeline's 3-minute
        # budget on 2 cores: they must beat the plain head by more than its fold interval.
        flipped_row = run(size0, best["class_weighting"], best["l2"], flip=True)
        if flipped_row["accuracy"][0] > best["accuracy"][0] + best["accuracy"][1]:
            best = flipped_row
    if best["flip"]:
        raise SystemExit("mirrored training photos won: the pipeline's head does not do that yet; add it")
    log(f"chosen: {best['size']}px, class_weighting={best['class_weighting']}, l2={best['l2']}, flip={best['flip']}")

    # The test split, once: trained as the pipeline trains (train split; temperature on val).
    f = feats[best["size"]]
    kernel, bias = fit_head(f["train"], f["y_train"], k, class_weighting=best["class_weighting"], l2=best["l2"])
    t = fit_temperature(softmax(f["val"] @ kernel + bias), f["y_val"])
    probs = apply_temperature(softmax(f["test"] @ kernel + bias), t)
    yt, pred = f["y_test"], probs.argmax(1)
    test = {
        "n": len(yt), "accuracy": float((pred == yt).mean()), "wilson": wilson(int((pred == yt).sum()), len(yt)),
        "temperature": t, "ece": expected_calibration_error(yt, probs),
        "recall": {class_names[c]: [float((pred[yt == c] == c).mean()), *wilson(int((pred[yt == c] == c).sum()),
                                                                                  int((yt == c).sum()))]
                   for c in range(k)},
        "precision": {class_names[c]: [float((yt[pred == c] == c).mean()), *wilson(int((yt[pred == c] == c).sum()),
                                                                                    int((pred == c).sum()))]
                      for c in range(k)},
    }
    out = {"class_names": class_names, "extract_seconds": extract_s, "sweep": rows, "chosen": best, "test": test}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    log(f"wrote {args.out}")
    print(table(out))


def table(out: dict) -> str:
    names = out["class_names"]
    head = ("| size | class weighting | L2 | mirrored copies | accuracy (fold mean ± 95% CI) | "
            + " | ".join(f"recall {n}" for n in names) + " | " + " | ".join(f"precision {n}" for n in names)
            + " | ECE raw -> calibrated |")
    lines = [head, "|" + "---|" * (5 + 2 * len(names) + 1)]
    for r in out["sweep"]:
        lines.append(
            f"| {r['size']} | {r['class_weighting']} | {r['l2']:g} | {'yes' if r.get('flip') else 'no'} | "
            f"{r['accuracy'][0]:.4f} ± {r['accuracy'][1]:.4f} | "
            + " | ".join(f"{m:.3f}" for m, _ in r["recall"]) + " | "
            + " | ".join(f"{m:.3f}" for m, _ in r["precision"])
            + f" | {r['ece_before'][0]:.3f} -> {r['ece_after'][0]:.3f} |"
        )
    t = out["test"]
    lines += ["", f"Test split, scored once with the chosen recipe: accuracy {t['accuracy']:.4f} "
              f"(Wilson 95% {t['wilson'][0]:.3f}-{t['wilson'][1]:.3f}, n={t['n']}), ECE {t['ece']:.3f}, "
              f"T={t['temperature']:.2f}; recall "
              + ", ".join(f"{n} {v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})" for n, v in t["recall"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
