"""int8 against float32 on the test split and on every photo of the shared data set.

    python benchmarks/int8_accuracy.py --bundle BUNDLE --data H5_DIR
        [--photos /work/shared/datasets/restaurant-photos] [--out benchmarks/results/int8_accuracy.json]

``BUNDLE`` is a bundle trained by the default recipe (its ``model.int8.onnx`` made by the
export step, :func:`clazzify.training.export.quantize_bundle`); ``H5_DIR`` the HDF5 folder
it was trained from. Reports, for each set, top-1 agreement, accuracy and ECE of both, and
recall per class (:func:`clazzify.training.export.compare_int8`): the issue's "accuracy
unchanged within 0.3 points, per class". The shared photos include the ones the model
trained on, so the test split is the unbiased figure; the shared set is the larger one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import PHOTOS, log

from clazzify.core.bundle import BundleMeta, find_bundle, load_predictor
from clazzify.core.imaging import ImageError, image_to_array
from clazzify.training.data import split_files
from clazzify.training.evaluate import predict_split
from clazzify.training.export import compare_int8

SOURCE = PHOTOS if PHOTOS.is_dir() else Path("/work/shared/datasets/restaurant-photos")


def shared_set(folder: Path, class_names: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every decodable photo under ``folder/<class>/``, decoded as training decodes."""
    images, labels = [], []
    for k, name in enumerate(class_names):
        for path in sorted((folder / name).iterdir()):
            try:
                images.append(image_to_array(path.read_bytes(), size))
            except ImageError as e:  # a photo ingest refuses too
                log(f"skipping {path.name}: {e}")
                continue
            labels.append(k)
    return np.stack(images), np.array(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="The HDF5 folder (test split).")
    parser.add_argument("--photos", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bundle = find_bundle(args.bundle)
    meta = BundleMeta.load(bundle)
    fp32, int8 = load_predictor(bundle, "onnx"), load_predictor(bundle, "openvino-int8")
    results = {"model": f"{meta.architecture} {meta.image_size} px", "export_check": meta.int8}
    test = split_files(args.data, "test")
    a, labels = predict_split(fp32, test)
    b, _ = predict_split(int8, test)
    results["test"] = compare_int8(a, b, labels, meta.class_names)
    images, labels = shared_set(args.photos, meta.class_names, meta.image_size)
    a = np.concatenate([fp32.predict(images[i : i + 64]) for i in range(0, len(images), 64)])
    b = np.concatenate([int8.predict(images[i : i + 64]) for i in range(0, len(images), 64)])
    results["shared"] = compare_int8(a, b, labels, meta.class_names)
    print("| set | photos | agreement | accuracy fp32 → int8 | ECE fp32 → int8 | "
          + " | ".join(f"{n} recall" for n in meta.class_names) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(meta.class_names))
    for name in ("test", "shared"):
        r = results[name]
        print(f"| {name} | {r['photos']} | {r['agreement']:.4f} | {r['fp32_accuracy']:.4f} → "
              f"{r['int8_accuracy']:.4f} | {r['fp32_ece']:.3f} → {r['int8_ece']:.3f} | "
              + " | ".join(f"{r['per_class'][n]['fp32_recall']:.3f} → "
                           f"{r['per_class'][n]['int8_recall']:.3f}" for n in meta.class_names)
              + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
