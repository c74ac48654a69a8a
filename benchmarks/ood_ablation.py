"""Unknown uploads, the variants of outlier exposure that were tried beside the default
(``benchmarks/ood.py``'s "outlier exposure, real OOD photos" row), scored the same way:

    python benchmarks/ood_ablation.py      # ~2 min once ood.py has cached the features

Each row is cross-validated with folds grouped by source repository (a source is never
both trained on and scored); thresholds are set per fold on the validation split at 2% and
5% false flags; the test split is what "test flagged" counts. Variants:

- ``outlier_weight``: the OOD rows weigh 1x, 2x or 4x an average class in the head's loss;
- ``+views``: each OOD photo also as a mirror image and three random crops (60-90% of the
  side), i.e. four more rows per photo;
- ``l2``: the head's L2 penalty (10 is the default recipe's);
- ``+kNN`` / ``+Mahalanobis``: the rejection score plus a training-free score, each
  standardised on the fold's validation photos;
- ``+synthetic``: the training outliers plus the 240 drawn graphics of
  :func:`clazzify.training.ood.synthetic_outliers` (flat colours, gradients, noise, bar
  charts, text, interface boxes; ``ood.py``'s "synthetic only" row), never scored.

Writes ``benchmarks/results/ood_ablation.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
from common import log
from ood import L2, OOD, RESULTS, SIZE, SOURCE, ood_features
from PIL import Image

from clazzify.core.imaging import image_to_array
from clazzify.training.head import ColumnScaling, FeatureCache, extract_features, image_features
from clazzify.training.ingest import IngestConfig, ingest_images
from clazzify.training.ood import (
    Mahalanobis,
    NearestNeighbours,
    _logsumexp,
    fit_rejection_head,
    fold_auroc,
    fold_thresholds,
    synthetic_outliers,
)
from clazzify.training.preprocess import PreprocessConfig, build_hdf5


def views(folder: Path, fm, seed: int = 0) -> np.ndarray:
    """Features of four more views of every OOD photo: a mirror image and three crops."""
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        img = image_to_array((folder / r["file"]).read_bytes(), SIZE)
        more = [img[:, ::-1]]
        for _ in range(3):
            side = int(SIZE * rng.uniform(0.6, 0.9))
            y0, x0 = rng.integers(0, SIZE - side + 1, 2)
            more.append(np.asarray(Image.fromarray(img[y0:y0 + side, x0:x0 + side]).resize((SIZE, SIZE))))
        out.append(np.asarray(fm.predict_on_batch(np.stack(more).astype(np.float32))))
    return np.stack(out)  # [N, 4, D]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clazzify-ood")
    parser.add_argument("--out", type=Path, default=RESULTS / "ood_ablation.json")
    args = parser.parse_args()
    import keras
    from sklearn.model_selection import GroupKFold

    from clazzify.training.models import ModelSpec, build_model, feature_model, tap_start

    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "manifest.csv"
    ingest_images(str(SOURCE), manifest, args.work / "ingest", IngestConfig(seed=42), progress=False)
    h5 = args.work / f"h5-{SIZE}-{hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]}"
    if not (h5 / "test.h5").is_file():
        build_hdf5(manifest, h5, PreprocessConfig(image_size=SIZE, seed=42), progress=False)
    keras.utils.set_random_seed(0)
    spec = ModelSpec("efficientnet_lite0", 4, SIZE, init_weights="packaged", augment=False, taps=True)
    fm = feature_model(build_model(spec))
    cache = FeatureCache(args.work / "features", f"efficientnet_lite0-taps-packaged-{SIZE}")
    x, y = {}, {}
    for split in ("train", "val", "test"):
        x[split], y[split] = extract_features(fm, [h5 / f"{split}.h5"], cache=cache, progress=False)
    xo, rows = ood_features(OOD, fm, cache)
    xv = views(OOD, fm)
    drawn = synthetic_outliers(240, SIZE, seed=1)
    xs = image_features(fm, drawn, 32)
    pooled = tap_start(spec)
    scaling = ColumnScaling.fit(x["train"], pooled)  # as the pipeline's head reads them
    x, xo, xv, xs = ({s: scaling.apply(v) for s, v in x.items()}, scaling.apply(xo), scaling.apply(xv),
                     scaling.apply(xs))
    k = int(y["train"].max()) + 1
    cats = np.array([r["category"] for r in rows])
    folds = list(GroupKFold(n_splits=5).split(xo, groups=[r["repository"] for r in rows]))
    knn, maha = NearestNeighbours.fit(x["train"][:, :pooled], k=10), Mahalanobis.fit(x["train"][:, :pooled], y["train"])
    extra = {name: {part: fit.score(feats[:, :pooled])
                    for part, feats in (("val", x["val"]), ("test", x["test"]), ("ood", xo))}
             for name, fit in (("knn", knn), ("mahalanobis", maha))}

    def variant(name: str, with_views: bool = False, weight: float = 1.0, l2: float = L2,
                add: tuple[str, ...] = (), taps: bool = True, synthetic: bool = False) -> dict:
        held, fold_of = np.empty(len(rows)), np.empty(len(rows), int)
        vals, tests = [], []
        cols = slice(None) if taps else slice(0, pooled)
        for fold, (tr, ho) in enumerate(folds):
            outliers = np.concatenate([xo[tr], *([xv[tr].reshape(-1, xo.shape[1])] if with_views else []),
                                       *([xs] if synthetic else [])])[:, cols]
            kr, br = fit_rejection_head(x["train"][:, cols], y["train"], k, outliers, l2=l2,
                                        outlier_weight=weight * len(y["train"]) / k / len(outliers))

            def margin(feats, kr=kr, br=br):  # log p(classes) - log p(not a class): high is in-distribution
                logits = feats[:, cols] @ kr + br
                return _logsumexp(logits[:, :-1]) - logits[:, -1]

            parts = {"val": margin(x["val"]), "test": margin(x["test"]), "ood": margin(xo)}
            mean, std = parts["val"].mean(), parts["val"].std()
            score = {p: (v - mean) / std for p, v in parts.items()}
            for a in add:
                m, s = extra[a]["val"].mean(), extra[a]["val"].std()
                score = {p: v + (extra[a][p] - m) / s for p, v in score.items()}
            vals.append(score["val"])
            tests.append(score["test"])
            held[ho], fold_of[ho] = score["ood"][ho], fold
        out = {"variant": name, "auroc": fold_auroc(tests, held, fold_of)}
        for rate in (0.02, 0.05):
            t = fold_thresholds(vals, rate)
            caught = held < t[fold_of]
            flagged = np.concatenate([s < c for s, c in zip(tests, t, strict=True)])
            out[str(rate)] = {"caught": float(caught.mean()), "test_flagged": float(flagged.mean()),
                              "per_category": {c: float(caught[cats == c].mean()) for c in sorted(set(cats))}}
        log(f"{name}: AUROC {out['auroc']:.3f}, caught at 2% {out['0.02']['caught']:.3f}")
        return out

    results = [variant("default (real OOD photos, taps)"), variant("no taps", taps=False),
               variant("outlier_weight 2x", weight=2.0),
               variant("outlier_weight 4x", weight=4.0), variant("+views", with_views=True),
               variant("+views, outlier_weight 4x", with_views=True, weight=4.0),
               variant("+views, l2 3", with_views=True, l2=3.0), variant("+views, l2 30", with_views=True, l2=30.0),
               variant("+kNN", add=("knn",)), variant("+Mahalanobis", add=("mahalanobis",)),
               variant("+kNN +Mahalanobis", add=("knn", "mahalanobis")),
               variant("+synthetic", synthetic=True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    cat_names = sorted(results[0]["0.02"]["per_category"])
    print("| variant | AUROC | caught at 2% | caught at 5% | test flagged at 2% | " + " | ".join(cat_names) + " |")
    print("|" + "---|" * (5 + len(cat_names)))
    for r in results:
        print(f"| {r['variant']} | {r['auroc']:.3f} | {r['0.02']['caught']:.1%} | {r['0.05']['caught']:.1%} | "
              f"{r['0.02']['test_flagged']:.1%} | "
              + " | ".join(f"{r['0.02']['per_category'][c]:.0%}" for c in cat_names) + " |")


if __name__ == "__main__":
    main()
