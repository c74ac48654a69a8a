"""Peak memory of ingest and of the HDF5 build as the photo count grows (issue 14, item 6).

    python benchmarks/ingest_memory.py [--photos 200000] [--size 64] [--work DIR]

Draws ``--photos`` synthetic photos once (``clazzify demo-data``, kept in ``--work`` for the
next run), then, each in a fresh process, runs on the first tenth of them and on all of them:

- ``ingest_images`` with the pixel cache (decode in worker processes, hashes, grouping,
  split, manifest);
- ``build_hdf5`` from that cache.

Reports wall time and peak RSS (VmHWM) of the process itself and of its largest worker.
Bounded memory means the all-photos peak stays near the tenth's: what grows is only the
per-photo bookkeeping (manifest records, hashes), not pixels.
Writes results/ingest_memory.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from common import in_fresh_process, log

from clazzify import DEMO_CLASSES
from clazzify.training.demo_data import write_demo_data
from clazzify.training.ingest import IngestConfig, ingest_images
from clazzify.training.preprocess import PreprocessConfig, build_hdf5


def ingest(source: str, out: str, pixel_size: int) -> dict:
    report = ingest_images(source, Path(out) / "manifest.csv", Path(out), IngestConfig(), progress=False,
                           pixel_cache=Path(out) / "pixels", pixel_size=pixel_size)
    return {"listed": report.listed, "accepted": report.accepted,
            "cache_gb": round(sum(p.stat().st_size for p in (Path(out) / "pixels").iterdir()) / 1e9, 2)}


def build(out: str, pixel_size: int) -> dict:
    build_hdf5(Path(out) / "manifest.csv", Path(out) / "data", PreprocessConfig(image_size=pixel_size),
               progress=False, pixel_cache=Path(out) / "pixels")
    summary = json.loads((Path(out) / "data" / "summary.json").read_text())
    return {"rows": sum(summary["counts"].values()), "from_pixel_cache": summary["from_pixel_cache"]}


def subset(source: Path, dest: Path, per_class: int) -> Path:
    """The first ``per_class`` photos of each class, as symlinks."""
    for label in sorted(p.name for p in source.iterdir() if p.is_dir()):
        (dest / label).mkdir(parents=True, exist_ok=True)
        for photo in sorted((source / label).iterdir())[:per_class]:
            link = dest / label / photo.name
            if not link.exists():
                link.symlink_to(photo)
    return dest


@click.command(help=__doc__)
@click.option("--photos", default=200_000, show_default=True, help="Synthetic photos in all.")
@click.option("--size", default=64, show_default=True, help="Side of the drawn photos, px.")
@click.option("--pixel-size", default=64, show_default=True, help="Side of the cached training pixels, px.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path(".clazzify/bench/memory"),
              show_default=True, help="Where the photos, caches and HDF5 files go (photos are kept for reruns).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(__file__).with_name("results") / "ingest_memory.json", show_default=True)
def main(photos: int, size: int, pixel_size: int, work: Path, out: Path) -> None:
    per_class = photos // len(DEMO_CLASSES)
    source = work / f"photos-{per_class}x{len(DEMO_CLASSES)}-{size}px"
    if not (source / ".complete").exists():
        log(f"drawing {per_class * len(DEMO_CLASSES):,} photos of {size} px into {source}")
        write_demo_data(source, per_class=per_class, size=size, bad_files=False)
        (source / ".complete").touch()
    results = {}
    for name, n in (("tenth", per_class // 10), ("all", per_class)):
        root = source if n == per_class else subset(source, work / f"subset-{n}", n)
        run = work / f"run-{name}"
        log(f"{name}: ingest of {n * len(DEMO_CLASSES):,} photos")
        results[name] = {"ingest": in_fresh_process(ingest, str(root), str(run), pixel_size)}
        log(f"{name}: {results[name]['ingest']}; HDF5 from the cache")
        results[name]["build_hdf5"] = in_fresh_process(build, str(run), pixel_size)
        log(f"{name}: {results[name]['build_hdf5']}")
    print("\n| photos | step | seconds | photos/s | peak RSS, MB | largest worker, MB |")
    print("|---:|---|---:|---:|---:|---:|")
    for res in results.values():
        listed = res["ingest"]["listed"]
        for step in ("ingest", "build_hdf5"):
            r = res[step]
            print(f"| {listed:,} | {step} | {r['seconds']:.1f} | {listed / r['seconds']:,.0f} | {r['peak_rss_mb']:.0f} "
                  f"| {r['largest_worker_rss_mb']:.0f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"photo_size": size, "pixel_size": pixel_size, **results}, indent=2))


if __name__ == "__main__":
    main()
