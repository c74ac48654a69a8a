"""Architecture and image-size choice by measurement on the real photos.

    python benchmarks/architectures.py [--source DIR] [--runs compact@96,mobilenet_v2@128,...]
                                       [--epochs 40] [--time-budget-min 30]

For every run: the pipeline's own steps (ingest once with the same seed, so every run
sees the same held-out test split; HDF5 at the run's size; training with its early
stopping; evaluation on the test split). Records test accuracy, per-class recall,
training time on this machine and the ONNX model size, appends each result to
results/architectures.jsonl as it finishes (a long sweep can be resumed with
--skip-done) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import PHOTOS

from clazzify.training.evaluate import evaluate_model
from clazzify.training.ingest import IngestConfig, ingest_images
from clazzify.training.preprocess import PreprocessConfig, build_hdf5
from clazzify.training.train import TrainConfig, train_model

DEFAULT_RUNS = "compact@96,compact@128,mobilenet_v2@128,efficientnet_b0@128,alexnet@227"
RESULTS = Path(__file__).with_name("results") / "architectures.jsonl"


def run_one(arch: str, size: int, manifest: Path, work: Path, args: argparse.Namespace) -> dict:
    data = work / f"data-{size}"
    if not (data / "test.h5").is_file():
        build_hdf5(manifest, data, PreprocessConfig(image_size=size, augment_copies=args.augment_copies),
                   progress=False)
    cfg = TrainConfig(architecture=arch, epochs=args.epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, patience=args.patience,
                      label_smoothing=args.label_smoothing)
    name = f"{arch}@{size}{args.tag}"
    out = work / name.replace("@", "-")
    if (out / "row.json").is_file():  # finished in an earlier, interrupted sweep
        return json.loads((out / "row.json").read_text())
    result = train_model(data, out, cfg, verbose=2)
    metrics = evaluate_model(result.bundle_dir, data / "test.h5", out / "eval")
    row = {
        "run": name,
        "test_accuracy": metrics.accuracy,
        "recall": metrics.recall,
        "min_recall": min(metrics.recall.values()),
        "train_minutes": result.seconds / 60,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "onnx_mb": (result.bundle_dir / "model.onnx").stat().st_size / 1e6,
        "test_images": metrics.n,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "runs"},
    }
    (out / "row.json").write_text(json.dumps(row, indent=2))
    return row


def table(rows: list[dict]) -> str:
    classes = sorted(rows[0]["recall"]) if rows else []
    head = "| run | test acc | " + " | ".join(f"recall {c}" for c in classes) + " | train min | epochs | ONNX MB |"
    lines = [head, "|---|" + "---:|" * (len(classes) + 4)]
    for r in rows:
        recalls = " | ".join(f"{r['recall'][c]:.3f}" for c in classes)
        lines.append(f"| {r['run']} | {r['test_accuracy']:.3f} | {recalls} | {r['train_minutes']:.1f} | "
                     f"{r['epochs_run']} | {r['onnx_mb']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=PHOTOS)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated ARCH@SIZE")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--augment-copies", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=None, help="keep HDF5 files and models here")
    parser.add_argument("--skip-done", action="store_true", help="skip runs already in the results file")
    parser.add_argument("--tag", default="", help="suffix for run names, to keep runs with other settings apart")
    args = parser.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"{args.source} not found: pass --source with real photos (class folders)")
    work = args.work or Path(tempfile.mkdtemp(prefix="clazzify-arch-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.csv"
    if not manifest.is_file():
        report = ingest_images(str(args.source), manifest, work / "ingest", IngestConfig(seed=args.seed),
                               progress=False)
        print(report.to_markdown())
    RESULTS.parent.mkdir(exist_ok=True)
    done = set()
    if args.skip_done and RESULTS.is_file():
        done = {json.loads(line)["run"] for line in RESULTS.read_text().splitlines() if line.strip()}
    rows = []
    for spec in args.runs.split(","):
        arch, size = spec.split("@")
        if spec + args.tag in done:
            continue
        start = time.perf_counter()
        row = run_one(arch, int(size), manifest, work, args)
        row["wall_minutes"] = (time.perf_counter() - start) / 60
        rows.append(row)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(table(rows), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
