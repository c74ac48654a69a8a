"""Unknown uploads: how well each out-of-distribution score separates photos that are none
of the classes from the classes' own photos, at the default recipe's features.

    python benchmarks/ood.py                      # the real photos of ../shared, ~3 min
    python benchmarks/ood.py --rates 0.02,0.05    # the false-flag rates to report

What it does, in the pipeline's own code:
1. ``ingest_images`` of the restaurant photos (seed 42, the pipeline's defaults): the
   train/val/test split. The default head (EfficientNet-Lite0 features, logistic
   regression, L2 10) is fitted on train, its temperature on val.
2. Every photo of ``ood-photos`` is decoded by the training/serving path at 224 px and
   gets the same features.
3. Training-free scores (MSP, energy, Mahalanobis, kNN) are fitted on the train split.
   Outlier exposure (a rejection output trained on OOD photos) is cross-validated with
   folds grouped by source repository, so no source is both trained on and scored.
4. Each score's threshold is set on the validation split at each false-flag rate; the
   test split and the OOD photos are scored once: AUROC with a bootstrap interval, the
   share caught per category with Wilson intervals, the share of test photos flagged and
   the accuracy of the test photos left unflagged.

Writes ``benchmarks/results/ood.json`` and prints the markdown table for README.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import PHOTOS, log

from clazzify.core.imaging import image_to_array
from clazzify.training.calibration import fit_temperature
from clazzify.training.head import (
    ColumnScaling,
    FeatureCache,
    extract_features,
    fit_head,
    image_features,
    pixel_digests,
    softmax,
)
from clazzify.training.ingest import IngestConfig, ingest_images
from clazzify.training.ood import (
    TRAINING_FREE,
    Mahalanobis,
    NearestNeighbours,
    auroc,
    auroc_interval,
    energy_score,
    fit_rejection_head,
    flag_rates,
    fold_auroc,
    fold_thresholds,
    msp_score,
    share_flagged,
    split_rejection,
    synthetic_outliers,
    threshold_at_false_flag_rate,
)
from clazzify.training.preprocess import PreprocessConfig, build_hdf5

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE = PHOTOS if PHOTOS.is_dir() else Path("/work/shared/datasets/restaurant-photos")
OOD = SOURCE.parent / "ood-photos"
SIZE = 224
L2 = 10.0


def ood_features(folder: Path, fm, cache: FeatureCache) -> tuple[np.ndarray, list[dict]]:
    """Features of every photo the OOD manifest lists, and its rows (category, repository)."""
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack([image_to_array((folder / r["file"]).read_bytes(), SIZE) for r in rows])
    digests = pixel_digests(images)
    todo = [i for i, d in enumerate(digests) if cache.get(d) is None]
    for start in range(0, len(todo), 32):
        block = todo[start : start + 32]
        for i, feat in zip(block, np.asarray(fm.predict_on_batch(images[block].astype(np.float32))), strict=True):
            cache.put(digests[i], feat.astype(np.float32))
    cache.save()
    return np.stack([cache.get(d) for d in digests]), rows


def scores_by_method(fitted: dict, feats: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    return {"msp": msp_score(logits), "energy": energy_score(logits),
            "mahalanobis": fitted["mahalanobis"].score(feats), "knn": fitted["knn"].score(feats)}


def summarise(method: str, val_id: np.ndarray, test_id: np.ndarray, test_correct: np.ndarray,
              ood: np.ndarray, rows: list[dict], rates: list[float]) -> dict:
    """AUROC (bootstrap interval, OOD photos resampled by source) and the rates at each
    threshold of one training-free method."""
    cats = sorted({r["category"] for r in rows})
    repos = [r["repository"] for r in rows]
    a, ci = auroc(test_id, ood), auroc_interval(test_id, ood, groups=repos, rounds=300)
    out = {"method": method, "auroc": a, "auroc_interval": ci, "at": {}}
    for rate in rates:
        t = threshold_at_false_flag_rate(val_id, rate)
        kept = test_id >= t
        out["at"][str(rate)] = {
            "threshold": t,
            "test_flagged": flag_rates(test_id, t),
            "ood_caught": flag_rates(ood, t),
            "per_category": {c: flag_rates(ood[[r["category"] == c for r in rows]], t) for c in cats},
            "accuracy_unflagged": float(test_correct[kept].mean()) if kept.any() else float("nan"),
            "accuracy_all": float(test_correct.mean()),
        }
    return out


def cross_validated(name: str, outliers, folds: list, x: dict, y: dict, k: int, xo: np.ndarray,
                    rows: list[dict], rates: list[float]) -> dict:
    """Outlier exposure scored fold by fold: thresholds per fold (each fold's head has its
    own scale) on that fold's val split, flags pooled over folds."""
    per_fold = []
    held_score = np.empty(len(rows))
    fold_of = np.empty(len(rows), int)
    for fold, (train_idx, held_idx) in enumerate(folds):
        kr, br = fit_rejection_head(x["train"], y["train"], k, outliers(train_idx), l2=L2)
        _, id_val = split_rejection(x["val"] @ kr + br)
        probs_test, id_test = split_rejection(x["test"] @ kr + br)
        held_score[held_idx] = split_rejection(xo[held_idx] @ kr + br)[1]
        fold_of[held_idx] = fold
        per_fold.append({"val": id_val, "test": id_test, "correct": probs_test.argmax(1) == y["test"]})
    out = {"method": name, "auroc": fold_auroc([f["test"] for f in per_fold], held_score, fold_of),
           "auroc_interval": None, "at": {}}
    cats = sorted({r["category"] for r in rows})
    correct = np.concatenate([f["correct"] for f in per_fold])
    for rate in rates:
        thresholds = fold_thresholds([f["val"] for f in per_fold], rate)
        caught = held_score < thresholds[fold_of]
        test_flags = np.concatenate([f["test"] < t for f, t in zip(per_fold, thresholds, strict=True)])
        out["at"][str(rate)] = {
            "test_flagged": share_flagged(test_flags),
            "ood_caught": share_flagged(caught),
            "per_category": {c: share_flagged(caught[[r["category"] == c for r in rows]]) for c in cats},
            "accuracy_unflagged": float(correct[~test_flags].mean()),
            "accuracy_all": float(correct.mean()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--ood", type=Path, default=OOD)
    parser.add_argument("--rates", default="0.02,0.05")
    parser.add_argument("--folds", type=int, default=5, help="outlier exposure: folds grouped by repository")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clazzify-ood")
    parser.add_argument("--out", type=Path, default=RESULTS / "ood.json")
    args = parser.parse_args()
    import keras
    from sklearn.model_selection import GroupKFold

    from clazzify.training.models import ModelSpec, build_model, feature_model, tap_start

    rates = [float(r) for r in args.rates.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "manifest.csv"
    ingest_images(str(args.source), manifest, args.work / "ingest", IngestConfig(seed=42), progress=False)
    h5 = args.work / f"h5-{SIZE}-{hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]}"
    if not (h5 / "test.h5").is_file():
        build_hdf5(manifest, h5, PreprocessConfig(image_size=SIZE, seed=42), progress=False)
    keras.utils.set_random_seed(0)
    spec = ModelSpec("efficientnet_lite0", 4, SIZE, init_weights="packaged", augment=False, taps=True)
    fm = feature_model(build_model(spec))
    cache = FeatureCache(args.work / "features", f"efficientnet_lite0-taps-packaged-{SIZE}")
    t = time.perf_counter()
    x, y = {}, {}
    for split in ("train", "val", "test"):
        x[split], y[split] = extract_features(fm, [h5 / f"{split}.h5"], cache=cache, progress=False)
    xo, rows = ood_features(args.ood, fm, cache)
    # The pipeline's head reads the taps' columns standardised on the train split
    # (clazzify.training.head.ColumnScaling); every score here sees the same numbers.
    pooled = tap_start(spec)
    scaling = ColumnScaling.fit(x["train"], pooled)
    x, xo = {s: scaling.apply(v) for s, v in x.items()}, scaling.apply(xo)
    # A run without an OOD source trains a model without taps: its first columns alone.
    x_pooled, xo_pooled = {s: v[:, :pooled] for s, v in x.items()}, xo[:, :pooled]
    log(f"features: {sum(len(v) for v in y.values())} photos + {len(rows)} OOD in {time.perf_counter() - t:.0f}s")
    k = int(max(y["train"].max(), y["val"].max(), y["test"].max())) + 1

    kernel, bias = fit_head(x_pooled["train"], y["train"], k, l2=L2)
    temperature = fit_temperature(softmax(x_pooled["val"] @ kernel + bias), y["val"])
    logits = {s: (x_pooled[s] @ kernel + bias) / temperature for s in ("train", "val", "test")}
    logits_ood = (xo_pooled @ kernel + bias) / temperature
    correct = logits["test"].argmax(1) == y["test"]
    fitted = {"mahalanobis": Mahalanobis.fit(x_pooled["train"], y["train"]),
              "knn": NearestNeighbours.fit(x_pooled["train"], k=10)}
    s_val = scores_by_method(fitted, x_pooled["val"], logits["val"])
    s_test = scores_by_method(fitted, x_pooled["test"], logits["test"])
    s_ood = scores_by_method(fitted, xo_pooled, logits_ood)
    results = [summarise(m, s_val[m], s_test[m], correct, s_ood[m], rows, rates) for m in TRAINING_FREE]

    # Outlier exposure, cross-validated by repository: each OOD photo is scored by a head
    # that never saw its source; the in-distribution side is each fold's val/test split.
    # Three kinds of outliers: the real OOD photos of the other folds, those plus synthetic
    # graphics (flat colours, gradients, charts, text, interfaces), and the synthetic ones
    # alone (what a run without an OOD source can have).
    synthetic = synthetic_outliers(240, SIZE, seed=1)
    xs = scaling.apply(image_features(fm, synthetic, 32))
    repos = np.array([r["repository"] for r in rows])
    folds = list(GroupKFold(n_splits=min(args.folds, len(set(repos)))).split(xo, groups=repos))
    # Each with the taps (the model a run with an OOD source trains) and without (before
    # the taps; synthetic graphics alone are what a run without an OOD source could have).
    for name, outliers, taps in (
            ("outlier_exposure", lambda tr: xo[tr], True),
            ("outlier_exposure+synthetic", lambda tr: np.concatenate([xo[tr], xs]), True),
            ("outlier_exposure, no taps", lambda tr: xo[tr, :pooled], False),
            ("synthetic_only, no taps", lambda tr: xs[:, :pooled], False)):
        results.append(cross_validated(name, outliers, folds, x if taps else x_pooled, y, k,
                                       xo if taps else xo_pooled, rows, rates))
        log(f"{name}: done")
    # Serving cost of each score beside the model's own forward pass (per photo, one core).
    cost = {}
    probe = xo[:64]
    # The taps' cost: the same backbone with and without them, interleaved, best of 5.
    fm_plain = feature_model(build_model(replace(spec, taps=False)))
    batch = np.zeros((8, SIZE, SIZE, 3), np.float32)
    best = {"forward_ms": [], "forward_no_taps_ms": []}
    for _ in range(5):
        for key, model in (("forward_ms", fm), ("forward_no_taps_ms", fm_plain)):
            model.predict_on_batch(batch)
            t0 = time.perf_counter()
            for _ in range(3):
                model.predict_on_batch(batch)
            best[key].append((time.perf_counter() - t0) / 24 * 1000)
    cost.update({key: min(v) for key, v in best.items()})
    cost["taps_overhead"] = cost["forward_ms"] / cost["forward_no_taps_ms"] - 1
    for name, fn in {"mahalanobis": fitted["mahalanobis"].score, "knn": fitted["knn"].score}.items():
        t0 = time.perf_counter()
        for _ in range(10):
            fn(probe[:, :pooled])
        cost[f"{name}_ms"] = (time.perf_counter() - t0) / 640 * 1000
    out = {"train": len(y["train"]), "val": len(y["val"]), "test": len(y["test"]), "ood": len(rows),
           "test_accuracy": float(correct.mean()), "rates": rates, "methods": results, "cost_ms_per_photo": cost}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(table(out))


def table(out: dict) -> str:
    cats = sorted(out["methods"][0]["at"][str(out["rates"][0])]["per_category"])
    head = ("| method | AUROC | caught at 2% | caught at 5% | test flagged at 2% | "
            + " | ".join(f"{c} at 2%" for c in cats) + " | accuracy unflagged / all |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m in out["methods"]:
        a2, a5 = m["at"].get("0.02"), m["at"].get("0.05")
        ci = m["auroc_interval"]
        auc = f"{m['auroc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else " (CV)")

        def pct(r):
            return f"{r['rate']:.1%} ({r['interval'][0]:.0%}-{r['interval'][1]:.0%})"

        lines.append(f"| {m['method']} | {auc} | {pct(a2['ood_caught'])} | {pct(a5['ood_caught'])} | "
                     f"{pct(a2['test_flagged'])} | "
                     + " | ".join(f"{a2['per_category'][c]['rate']:.0%}" for c in cats)
                     + f" | {a2['accuracy_unflagged']:.4f} / {a2['accuracy_all']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
