"""One-split check: fine-tuning EfficientNet-Lite0 (packaged init) vs the frozen head, on val.

    python benchmarks/accuracy.py --sizes 160      # first: builds the HDF5 files it reads
    python benchmarks/finetune_check.py [--h5 /tmp/clazzify-accuracy/h5-160-<manifest>]

Both train on the pipeline's train split and are scored on its val split (never the test
split). Fine-tuning: the whole network, Adam 3e-4 with cosine decay, 3 epochs, online
augmentation, label smoothing 0.1; its best epoch is picked on that same val split, which
flatters it slightly. Results in benchmarks/README.md ("Accuracy").
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
import time
from pathlib import Path

from clazzify.training.train import TrainConfig, train_model

RECIPES = {
    "frozen head": TrainConfig(architecture="efficientnet_lite0", init_weights="packaged", frozen_backbone=True,
                               class_weighting="none", head_l2=10.0, onnx=False),
    "fine-tuned, 3 epochs, lr 3e-4": TrainConfig(
        architecture="efficientnet_lite0", init_weights="packaged", frozen_backbone=False, epochs=3,
        learning_rate=3e-4, patience=0, class_weighting="none", label_smoothing=0.1, onnx=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    found = sorted(glob.glob(str(Path(tempfile.gettempdir()) / "clazzify-accuracy" / "h5-160-*")))
    parser.add_argument("--h5", type=Path, default=Path(found[-1]) if found else None)
    args = parser.parse_args()
    if args.h5 is None:
        raise SystemExit("no HDF5 folder: run benchmarks/accuracy.py --sizes 160 first or pass --h5")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cfg) in enumerate(RECIPES.items()):
            start = time.perf_counter()
            result = train_model(args.h5, Path(tmp) / str(i), cfg, verbose=2)
            out[name] = {"val_accuracy": result.best_val_accuracy, "minutes": (time.perf_counter() - start) / 60,
                         "history": result.history}
            print(f"{name}: val accuracy {result.best_val_accuracy:.4f} in {out[name]['minutes']:.1f} min", flush=True)
    results = Path(__file__).resolve().parent / "results" / "finetune_check.json"
    results.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
