"""Ingest: list a source, validate every image, remove duplicates, split.

Sources:
- a folder or bucket prefix with one sub-folder per class (``root/<label>/*``);
- a CSV (``uri,label`` header) or JSONL (``{"uri": ..., "label": ...}``) manifest;
  relative URIs are resolved against the manifest's own folder.

Bad files are quarantined with a reason and never stop the run; exact duplicates
(same bytes) are kept once, so a photo can never sit in two splits.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clazzify.core import storage
from clazzify.core.errors import ConfigError, DataError, ImageError, StorageError
from clazzify.core.imaging import ImageLimits, content_hash, decode_image
from clazzify.core.manifest import is_manifest, read_manifest_rows

SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = ("uri", "label", "split", "sha256", "width", "height", "group", "phash", "shard")
#: Columns a split manifest may lack (older manifests); they read as the field default.
OPTIONAL_FIELDS = frozenset({"phash", "shard"})
#: JPEGs are validated with DCT scaling down to at least this side (pHash needs ~128 px).
VALIDATE_DRAFT = 256
#: Centre-crop scales hashed per image, so lightly cropped copies still match.
PHASH_SCALES = (1.0, 0.9, 0.8)
QUARANTINE_FIELDS = ("uri", "label", "reason", "detail")


@dataclass(frozen=True)
class IngestConfig:
    """Settings of the ingest step.

    Attributes:
        val_fraction: share of each class's groups that go to validation.
        test_fraction: share of each class's groups that go to test.
        seed: seed of the split; the same seed and data give the same split.
        limits: images smaller or larger than these are quarantined (the decompression-bomb
            guard among them).
        workers: decoding threads; 0 means two per CPU core.
        near_duplicate_distance: images whose perceptual hashes differ in at most this
            many of 64 bits are one group (never split apart); -1 turns this off.
        shard_size: at most this many images per shard, the unit one preprocessing task
            turns into HDF5 (the pipeline fans out over shards); 0 means one shard.
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    limits: ImageLimits = ImageLimits()
    workers: int = 0
    near_duplicate_distance: int = 8
    shard_size: int = 0

    def __post_init__(self) -> None:
        if self.shard_size < 0:
            raise ConfigError(f"shard_size must be >= 0 (0 = one shard), got {self.shard_size}")
        if not -1 <= self.near_duplicate_distance <= 20:
            raise ConfigError(
                f"near_duplicate_distance must be in [-1, 20] (-1 = off), got {self.near_duplicate_distance}"
            )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves nothing to train on: keep their sum below 1"
            )
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class Item:
    """One image as listed by a source."""

    uri: str
    label: str


@dataclass
class Record:
    """One accepted image, as written to the split manifest."""

    uri: str
    label: str
    sha256: str
    width: int
    height: int
    group: str
    split: str = ""
    phash: str = ""
    shard: int = 0

    @property
    def hashes(self) -> list[int]:
        return [int(h, 16) for h in self.phash.split()]


@dataclass(frozen=True)
class Rejected:
    """One quarantined file and why."""

    uri: str
    label: str
    reason: str
    detail: str


@dataclass
class IngestReport:
    """What ingest did: counts per class, split and quarantine reason."""

    source: str
    listed: int
    accepted: int
    class_names: list[str]
    per_class: dict[str, int]
    per_split: dict[str, dict[str, int]]
    quarantined: dict[str, int]
    duplicates_removed: int
    duplicate_groups: list[list[str]] = field(default_factory=list)
    near_duplicate_groups: list[list[str]] = field(default_factory=list)
    shard_sizes: list[int] = field(default_factory=list)

    @property
    def shards(self) -> list[int]:
        """The shard numbers, what the pipeline's preprocessing fans out over."""
        return list(range(len(self.shard_sizes)))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def to_markdown(self) -> str:
        lines = [
            f"# Ingest report for `{self.source}`",
            "",
            f"{self.listed} files listed, {self.accepted} accepted, "
            f"{sum(self.quarantined.values())} quarantined, "
            f"{self.duplicates_removed} exact duplicates removed, "
            f"{len(self.near_duplicate_groups)} near-duplicate groups kept within one split.",
            "",
            f"{len(self.shard_sizes)} shard(s) of {min(self.shard_sizes, default=0)}-"
            f"{max(self.shard_sizes, default=0)} images for preprocessing.",
            "",
            "| class | " + " | ".join(SPLITS) + " | total |",
            "|---|" + "---:|" * (len(SPLITS) + 1),
        ]
        for name in self.class_names:
            row = [str(self.per_split[s].get(name, 0)) for s in SPLITS]
            lines.append(f"| {name} | " + " | ".join(row) + f" | {self.per_class[name]} |")
        if self.quarantined:
            lines += ["", "| quarantine reason | files |", "|---|---:|"]
            lines += [f"| {r} | {n} |" for r, n in sorted(self.quarantined.items())]
        if self.near_duplicate_groups:
            lines += ["", "Near-duplicate groups (each kept within one split):", ""]
            lines += [f"- {', '.join(g)}" for g in self.near_duplicate_groups]
        return "\n".join(lines) + "\n"


def read_manifest(uri: str) -> list[Item]:
    """Read a CSV (``uri,label`` header) or JSONL manifest into items.

    Raises:
        DataError: a row is not an object, lacks ``uri`` or ``label``, or leaves one empty.
    """
    rows = read_manifest_rows(uri, ("uri", "label"))
    return [Item(row.get("uri"), row.get("label")) for row in rows]


def list_source(source: str) -> list[Item]:
    """List every file of a class-folder source or a manifest."""
    if is_manifest(source):
        return read_manifest(source)
    labels = storage.list_children(source)
    if not labels:
        raise DataError(
            f"{source} has no class sub-folders: lay images out as {source}/<label>/<file> "
            "or pass a CSV/JSONL manifest"
        )
    items: list[Item] = []
    for label in labels:
        for uri in storage.list_files(storage.join(source, label)):
            if not uri.rsplit("/", 1)[-1].startswith("."):
                items.append(Item(uri, label))
    return items


def check_item(item: Item, limits: ImageLimits) -> Record | Rejected:
    """Read and fully decode one image; never raises for bad image data."""
    try:
        data = storage.read_bytes(item.uri)
    except StorageError as e:
        return Rejected(item.uri, item.label, "unreadable", str(e))
    try:
        # A draft decode still entropy-decodes the whole JPEG bitstream (so truncation
        # and corruption are caught), but skips most of the inverse DCT.
        img = decode_image(data, limits, draft_size=VALIDATE_DRAFT)
    except ImageError as e:
        return Rejected(item.uri, item.label, e.reason, str(e))
    digest = content_hash(data)
    return Record(item.uri, item.label, digest, img.width, img.height, group=digest, phash=perceptual_hashes(img))


def perceptual_hashes(img) -> str:
    """64-bit pHashes of the image's centre crops at :data:`PHASH_SCALES`, as hex words.

    pHash looks at a 32x32 greyscale thumbnail, so the image is first box-reduced to
    about 128 px (cheap, in C) instead of resampling a 4000 px scan three times.
    """
    import imagehash

    gray = img.convert("L")
    factor = min(gray.size) // 128
    if factor > 1:
        gray = gray.reduce(factor)
    width, height = gray.size
    out = []
    for scale in PHASH_SCALES:
        left, top = int(width * (1 - scale) / 2), int(height * (1 - scale) / 2)
        crop = gray if scale == 1.0 else gray.crop((left, top, width - left, height - top))
        out.append(str(imagehash.phash(crop)))
    return " ".join(out)


def hash_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Smallest Hamming distance between any hash of ``a`` and any of ``b``."""
    return min((x ^ y).bit_count() for x in a for y in b)


def near_duplicate_pairs(hashes: Sequence[Sequence[int]], max_distance: int) -> set[tuple[int, int]]:
    """Index pairs whose hashes are within ``max_distance`` bits.

    Candidates come from banding: with ``max_distance + 1`` bands, two hashes within
    the distance agree exactly on at least one band (pigeonhole), so no pair is
    missed and most pairs are never compared.
    """
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
    return pairs


def group_near_duplicates(records: Sequence[Record], max_distance: int) -> list[list[str]]:
    """Give near-identical records one ``group`` (union-find); returns groups of >1 URIs."""
    if max_distance < 0 or len(records) < 2:
        return []
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in near_duplicate_pairs([r.hashes for r in records], max_distance):
        parent[root(i)] = root(j)
    members: dict[int, list[Record]] = defaultdict(list)
    for i, rec in enumerate(records):
        members[root(i)].append(rec)
    groups = []
    for recs in members.values():
        group_id = min(r.sha256 for r in recs)
        for rec in recs:
            rec.group = group_id
        if len(recs) > 1:
            groups.append(sorted(r.uri for r in recs))
    return sorted(groups)


def remove_duplicates(records: Sequence[Record]) -> tuple[list[Record], list[Rejected], list[list[str]]]:
    """Keep one record per content hash.

    Copies that agree on the label are dropped in favour of the first URI (sorted);
    copies whose labels disagree are all quarantined, since no label can be trusted.

    Returns:
        (kept records, quarantined conflicts, groups of duplicate URIs).
    """
    by_hash: dict[str, list[Record]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: r.uri):
        by_hash[rec.sha256].append(rec)
    kept: list[Record] = []
    conflicts: list[Rejected] = []
    groups: list[list[str]] = []
    for copies in by_hash.values():
        if len(copies) > 1:
            groups.append([c.uri for c in copies])
        labels = {c.label for c in copies}
        if len(labels) > 1:
            detail = "same bytes labelled " + ", ".join(sorted(labels))
            conflicts += [Rejected(c.uri, c.label, "conflicting_labels", detail) for c in copies]
        else:
            kept.append(copies[0])
    return kept, conflicts, groups


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """How many of ``n`` groups go to (train, val, test); each non-zero share gets >= 1."""
    n_val = round(n * val_fraction)
    n_test = round(n * test_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    return n - n_val - n_test, n_val, n_test


def assign_splits(records: Sequence[Record], cfg: IngestConfig) -> list[Record]:
    """Stratified, seeded split over groups: every member of a group lands in one split.

    A group is stratified by its most common label, so a near-duplicate group that
    mixes labels still stays whole.
    """
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.group].append(rec)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for key, recs in groups.items():
        label = Counter(r.label for r in recs).most_common(1)[0][0]
        by_stratum[label].append(key)
    rng = np.random.default_rng(cfg.seed)
    out: list[Record] = []
    for label in sorted(by_stratum):
        keys = sorted(by_stratum[label])
        n_train, n_val, _ = split_counts(len(keys), cfg.val_fraction, cfg.test_fraction)
        if n_train < 1:
            raise DataError(
                f"class {label!r} has only {len(keys)} distinct image group(s): it needs at least "
                f"{len(keys) - n_train + 1} to fill train/val/test; add images or lower the fractions"
            )
        order = rng.permutation(len(keys))
        for rank, idx in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            for rec in groups[keys[idx]]:
                rec.split = split
                out.append(rec)
    return sorted(out, key=lambda r: (SPLITS.index(r.split), r.label, r.uri))


def assign_shards(records: Sequence[Record], shard_size: int) -> list[int]:
    """Deal ``records`` round-robin into shards of at most ``shard_size`` (0 = one shard).

    Dealt in manifest order (split, then class), every shard gets a stratified slice
    of every split and class, and shard sizes differ by at most one image.

    Returns:
        the number of images in each shard.
    """
    n_shards = max(1, -(-len(records) // shard_size)) if shard_size else 1
    for i, rec in enumerate(records):
        rec.shard = i % n_shards
    return [len(range(i, len(records), n_shards)) for i in range(n_shards)]


def _write_csv(path: Path, fields: Iterable[str], rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_split_manifest(path: Path) -> list[Record]:
    """Read a split manifest written by :func:`ingest_images`."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(MANIFEST_FIELDS) - OPTIONAL_FIELDS - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path} is not a split manifest: missing columns {sorted(missing)}")
        return [
            Record(
                uri=row["uri"],
                label=row["label"],
                sha256=row["sha256"],
                width=int(row["width"]),
                height=int(row["height"]),
                group=row["group"],
                split=row["split"],
                phash=row.get("phash") or "",
                shard=int(row.get("shard") or 0),
            )
            for row in reader
        ]


def ingest_images(
    source: str,
    manifest_path: Path,
    report_dir: Path,
    cfg: IngestConfig = IngestConfig(),
    *,
    progress: bool = True,
) -> IngestReport:
    """Validate, de-duplicate and split every image of ``source``.

    Args:
        source: class-folder root (local or s3://) or a CSV/JSONL manifest.
        manifest_path: where the split manifest CSV is written.
        report_dir: folder for ``report.json``, ``report.md`` and ``quarantine.csv``.
        cfg: split and quality settings.
        progress: show a progress bar.

    Raises:
        StorageError: the source cannot be reached.
        DataError: nothing usable was found, or a class is too small to split.
    """
    storage.preflight(source)
    items = list_source(source)
    if not items:
        raise DataError(f"no files found under {source}")
    workers = cfg.workers or 2 * (os.cpu_count() or 1)
    limits = cfg.limits
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(lambda item: check_item(item, limits), items),
                total=len(items),
                desc="ingest",
                unit="img",
                disable=not progress,
            )
        )
    accepted = [r for r in results if isinstance(r, Record)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    kept, conflicts, dup_groups = remove_duplicates(accepted)
    rejected += conflicts
    near_groups = group_near_duplicates(kept, cfg.near_duplicate_distance)
    if not kept:
        reasons = Counter(r.reason for r in rejected)
        raise DataError(f"no usable image in {source}: all {len(items)} quarantined {dict(reasons)}")
    split = assign_splits(kept, cfg)
    shard_sizes = assign_shards(split, cfg.shard_size)

    _write_csv(manifest_path, MANIFEST_FIELDS, (asdict(r) for r in split))
    report_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(report_dir / "quarantine.csv", QUARANTINE_FIELDS, (asdict(r) for r in rejected))
    class_names = sorted({r.label for r in split})
    per_split = {s: dict(Counter(r.label for r in split if r.split == s)) for s in SPLITS}
    report = IngestReport(
        source=source,
        listed=len(items),
        accepted=len(split),
        class_names=class_names,
        per_class=dict(Counter(r.label for r in split)),
        per_split=per_split,
        quarantined=dict(Counter(r.reason for r in rejected)),
        duplicates_removed=len(accepted) - len(kept) - len(conflicts),
        duplicate_groups=dup_groups,
        near_duplicate_groups=near_groups,
        shard_sizes=shard_sizes,
    )
    (report_dir / "report.json").write_text(report.to_json())
    (report_dir / "report.md").write_text(report.to_markdown())
    return report
