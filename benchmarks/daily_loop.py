"""Two days of the loop on the real photos: day 1 holds 70% of them, day 2 all of them.

    python benchmarks/daily_loop.py [--photos DIR] [--work DIR] [--set key=value ...]

Runs the default pipeline (``python -m pipelines.train run --local``) on day 1, then on day 2
with the same MLflow store, so day 2's challenger is gated against day 1's champion. Reports
how many of day 2's comparison photos were in day 1's training data (train or val; it must
be 0), both models' accuracy on them, the gate's decision and each run's wall time. Prints
a Markdown table and writes results/daily_loop.json.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import click
from common import PHOTOS, log

REPO = Path(__file__).resolve().parents[1]


def write_days(photos: Path, work: Path) -> tuple[Path, Path]:
    """day1.csv: a fixed 70% of the photos (by a hash of the file name); day2.csv: all."""
    rows = list(csv.DictReader((photos / "manifest.csv").open()))
    everything = [(str(photos / r["file"]), r["label"]) for r in rows]
    day1 = [r for r in everything if int(hashlib.sha256(r[0].encode()).hexdigest()[:8], 16) % 100 < 70]
    paths = []
    for name, chosen in (("day1.csv", day1), ("day2.csv", everything)):
        path = work / name
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["uri", "label"])
            writer.writerows(chosen)
        paths.append(path)
    return paths[0], paths[1]


def run_day(manifest: Path, home: Path, sets: tuple[str, ...]) -> tuple[float, Path]:
    """Run the pipeline; (wall seconds, the run's KFP output folder)."""
    before = set((home / "kfp").glob("*")) if (home / "kfp").exists() else set()
    cmd = [sys.executable, "-m", "pipelines.train", "run", "--local", "--source", str(manifest),
           "--home", str(home), *[a for s in sets for a in ("--set", s)]]
    log(" ".join(cmd))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode not in (0, 3):  # 3: the gate failed, which is a result here, not an error
        raise subprocess.CalledProcessError(done.returncode, cmd)
    seconds = time.perf_counter() - start
    (run_dir,) = set((home / "kfp").glob("*")) - before
    return seconds, run_dir


def seen(run_dir: Path) -> set[str]:
    """Content hashes of the photos a run's model learned from (its train and val splits)."""
    manifest = next(run_dir.glob("ingest/manifest"))
    return {r["sha256"] for r in csv.DictReader(manifest.open()) if r["split"] in ("train", "val")}


@click.command()
@click.option("--photos", type=click.Path(exists=True, file_okay=False, path_type=Path), default=PHOTOS,
              show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/daily-loop"),
              show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Pipeline parameter (default: none).")
def main(photos: Path, work: Path, sets: tuple[str, ...]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    day1, day2 = write_days(photos, work)
    t1, run1 = run_day(day1, home, sets)
    t2, run2 = run_day(day2, home, sets)
    evaluation = next(run2.glob("evaluate/evaluation"))
    comparison = json.loads((evaluation / "comparison.json").read_text())
    gate = json.loads((evaluation / "gate_report.json").read_text())
    compared = set(comparison["compared_sha256"])
    leaked = len(compared & seen(run1))
    result = {
        "day1_photos": sum(1 for _ in day1.open()) - 1, "day2_photos": sum(1 for _ in day2.open()) - 1,
        "day1_seconds": t1, "day2_seconds": t2, "compared": len(compared),
        "compared_in_day1_training": leaked,
        "compared_in_day2_training": len(compared & seen(run2)),
        "excluded_seen_by_champion": comparison["excluded_seen"],
        "champion_accuracy": comparison["champion_accuracy"],
        "challenger_accuracy": comparison["challenger_accuracy"],
        "challenger_test_accuracy": gate["challenger_accuracy"], "verdict": gate["verdict"],
        "reasons": gate["reasons"], "params": list(sets),
    }
    print("| | day 1 (70%) | day 2 (all) |\n|---|---:|---:|")
    print(f"| photos | {result['day1_photos']} | {result['day2_photos']} |")
    print(f"| wall time | {t1 / 60:.1f} min | {t2 / 60:.1f} min |")
    print(f"| accuracy on the {len(compared)} comparison photos | {comparison['champion_accuracy']:.3f} "
          f"(champion) | {comparison['challenger_accuracy']:.3f} (challenger) |")
    print(f"\ncomparison photos in day 1's training data: {leaked}; left out as seen by the champion: "
          f"{comparison['excluded_seen']}; gate: {gate['verdict']}")
    out = Path(__file__).with_name("results") / "daily_loop.json"
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
