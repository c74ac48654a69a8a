"""Near-duplicate grouping and splitting at scale: time and peak memory.

    python benchmarks/ingest_groups.py --source DATA [--synthetic 200000] [--baseline-limit 10000]

1. On a folder of photos (``clazzify demo-data DATA --per-class 2500 --size 256``): the decode
   pass alone (every photo validated and hashed, what ingest cannot avoid), the whole
   ``ingest_images`` (decode + dedupe + group + split + write), and the grouping step of the
   union-find chaining it replaced (the baseline), each in a fresh process for its peak RSS.
2. On ``--synthetic`` photos of PRECOMPUTED perceptual hashes (no images: 200,000 photos would
   take an hour to draw and decode here): clusters of near-copies among unrelated photos,
   grouped and split by the same functions ingest calls.

Prints a Markdown table and writes results/ingest_groups.json.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import click
from common import in_fresh_process, log

from clazzify.training.ingest import (
    IngestConfig,
    Record,
    assign_splits,
    check_item,
    group_near_duplicates,
    hash_distance,
    ingest_images,
    list_source,
)


def decode_pass(source: str) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    items = list_source(source)
    limits = IngestConfig().limits
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda item: check_item(item, limits), items))
    return {"photos": len(results)}


def whole_ingest(source: str, out: str) -> dict:
    report = ingest_images(source, Path(out) / "manifest.csv", Path(out), progress=False)
    biggest = max((len(g) for g in report.near_duplicate_groups), default=1)
    return {"photos": report.accepted, "groups": len(report.near_duplicate_groups), "largest_group": biggest,
            "suspect_groups": len(report.suspect_groups), "per_split": report.per_split}


def records_of(source: str, limit: int) -> list[Record]:
    from concurrent.futures import ThreadPoolExecutor

    items = list_source(source)[:limit]
    limits = IngestConfig().limits
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        return [r for r in pool.map(lambda item: check_item(item, limits), items) if isinstance(r, Record)]


def union_find_groups(phashes: list[str], max_distance: int = 8) -> dict:
    """The replaced algorithm (union-find over every banded pair), for the baseline row."""
    import numpy as np

    hashes = [[int(h, 16) for h in p.split()] for p in phashes]
    start = time.perf_counter()
    n_bands = max_distance + 1
    bounds = np.linspace(0, 64, n_bands + 1).astype(int)
    buckets: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, hs in enumerate(hashes):
        for h in hs:
            for b in range(n_bands):
                width = bounds[b + 1] - bounds[b]
                buckets[(b, (h >> int(bounds[b])) & ((1 << int(width)) - 1))].add(i)
    pairs: set[tuple[int, int]] = set()
    seen: set[tuple[int, int]] = set()
    for members in buckets.values():
        ordered = sorted(members)
        for x, i in enumerate(ordered):
            for j in ordered[x + 1 :]:
                if (i, j) in seen:
                    continue
                seen.add((i, j))
                if hash_distance(hashes[i], hashes[j]) <= max_distance:
                    pairs.add((i, j))
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    sizes = defaultdict(int)
    for i in range(len(hashes)):
        sizes[root(i)] += 1
    return {"group_seconds": time.perf_counter() - start, "largest_group": max(sizes.values())}


def leader_groups(phashes: list[str], labels: list[str]) -> dict:
    import hashlib

    # content hashes as ingest makes them (the split hashes their first 32 hex digits)
    records = [Record(f"p{i}", labels[i], hashlib.sha256(b"%d" % i).hexdigest(), 1, 1, "", phash=p)
               for i, p in enumerate(phashes)]
    start = time.perf_counter()
    grouping = group_near_duplicates(records, 8)
    t_group = time.perf_counter() - start
    start = time.perf_counter()
    out = assign_splits(records, IngestConfig())
    t_split = time.perf_counter() - start
    shares = {}
    for label in sorted(set(labels)):
        splits = [r.split for r in out if r.label == label]
        shares[label] = {s: round(splits.count(s) / len(splits), 4) for s in ("train", "val", "test")}
    return {"group_seconds": t_group, "split_seconds": t_split, "groups": len(grouping.groups),
            "largest_group": max((len(g) for g in grouping.groups), default=1), "shares": shares}


def synthetic_hashes(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` photos' pHash triples: 70% unrelated, 30% near-copies (<= 6 bits flipped) of them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_base = int(n * 0.7)
    base = rng.integers(0, 2**63, (n_base, 3), dtype=np.int64).astype(np.uint64) << np.uint64(1)
    base |= rng.integers(0, 2, (n_base, 3), dtype=np.int64).astype(np.uint64)
    copies_of = rng.integers(0, n_base, n - n_base)
    flips = np.zeros((n - n_base, 3), dtype=np.uint64)
    for _ in range(6):
        bits = rng.integers(0, 64, (n - n_base, 3)).astype(np.uint64)
        keep = rng.random((n - n_base, 3)) < 0.7
        flips ^= np.where(keep, np.uint64(1) << bits, np.uint64(0))
    copies = base[copies_of] ^ flips
    allh = np.concatenate([base, copies])
    classes = np.concatenate([rng.integers(0, 4, n_base), rng.integers(0, 4, n_base)[copies_of]])
    names = ("ambiance", "food", "human", "menu")
    phashes = [" ".join(f"{int(h):016x}" for h in row) for row in allh]
    return phashes, [names[c] for c in classes]


@click.command()
@click.option("--source", type=click.Path(exists=True, file_okay=False), default=None,
              help="Class folders (clazzify demo-data DATA --per-class 2500 --size 256); without it only "
              "the synthetic row runs.")
@click.option("--synthetic", default=200_000, show_default=True, help="Photos of precomputed hashes.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("/tmp/ingest-groups"),
              show_default=True)
def main(source: str | None, synthetic: int, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if source is None:
        log(f"synthetic {synthetic:,} photos of precomputed hashes")
        syn = in_fresh_process(leader_groups, *synthetic_hashes(synthetic))
        print(f"| {synthetic:,} synthetic photos (precomputed hashes): grouping | {syn['group_seconds']:.1f} | "
              f"{syn['peak_rss_mb']:.0f} | largest group {syn['largest_group']}; split {syn['split_seconds']:.1f} s |")
        print("per-class split shares (synthetic):", json.dumps(syn["shares"]))
        out = Path(__file__).with_name("results") / "ingest_groups_synthetic.json"
        out.write_text(json.dumps(syn, indent=2))
        return
    log("decode pass")
    decode = in_fresh_process(decode_pass, source)
    log("whole ingest")
    ingest = in_fresh_process(whole_ingest, source, str(work / "ing"))
    log("baseline: union-find grouping over the same hashes")
    hashes_file = work / "phashes.json"
    recs = records_of(source, 10**9)
    hashes_file.write_text(json.dumps([[r.phash, r.label] for r in recs]))
    phashes = [r.phash for r in recs]
    labels = [r.label for r in recs]
    baseline = in_fresh_process(union_find_groups, phashes)
    leader = in_fresh_process(leader_groups, phashes, labels)
    log(f"synthetic {synthetic:,} photos of precomputed hashes")
    syn_hashes, syn_labels = synthetic_hashes(synthetic)
    syn = in_fresh_process(leader_groups, syn_hashes, syn_labels)
    rows = [
        ("decode pass (validate + pHash every photo)", decode["seconds"], decode["peak_rss_mb"], ""),
        ("`ingest_images` (decode + dedupe + group + split + write)", ingest["seconds"], ingest["peak_rss_mb"],
         f"largest group {ingest['largest_group']}, {ingest['suspect_groups']} suspect"),
        ("grouping only: union-find over banded pairs (baseline)", baseline["group_seconds"],
         baseline["peak_rss_mb"], f"largest group {baseline['largest_group']}"),
        ("grouping only: representatives + multi-index hashing", leader["group_seconds"], leader["peak_rss_mb"],
         f"largest group {leader['largest_group']}"),
        (f"{synthetic:,} synthetic photos (precomputed hashes): grouping", syn["group_seconds"],
         syn["peak_rss_mb"], f"largest group {syn['largest_group']}; split {syn['split_seconds']:.1f} s"),
    ]
    print("| step | seconds | peak RSS MB | note |\n|---|---:|---:|---|")
    for name, sec, rss, note in rows:
        print(f"| {name} | {sec:.1f} | {rss:.0f} | {note} |")
    print(f"\ningest / decode time: {ingest['seconds'] / decode['seconds']:.2f}x; "
          f"baseline / new grouping: {baseline['group_seconds'] / leader['group_seconds']:.0f}x time, "
          f"{baseline['peak_rss_mb'] / leader['peak_rss_mb']:.1f}x memory")
    print("per-class split shares (10k photos):", json.dumps(ingest["per_split"]))
    print("per-class split shares (synthetic):", json.dumps(syn["shares"]))
    out = Path(__file__).with_name("results") / "ingest_groups.json"
    out.write_text(json.dumps({"decode": decode, "ingest": ingest, "baseline": baseline, "leader": leader,
                               "synthetic": syn}, indent=2))


if __name__ == "__main__":
    main()
