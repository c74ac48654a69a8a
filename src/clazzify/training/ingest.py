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
import hashlib
import json
import os
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import chain, combinations
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from clazzify.core import storage
from clazzify.core.errors import ConfigError, DataError, ImageError, StorageError
from clazzify.core.imaging import (
    ImageLimits,
    content_hash,
    decode_opened,
    draft_scale,
    fit_square,
    image_to_array,
    open_image,
)
from clazzify.core.manifest import is_manifest, read_manifest_rows
from clazzify.core.parallel import process_context
from clazzify.training import pixels
from clazzify.training.lineage import DatasetLineage

SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = (
    "uri", "label", "split", "sha256", "width", "height", "group", "phash", "shard", "label_source",
)
#: Columns a split manifest may lack (older manifests); they read as the field default.
OPTIONAL_FIELDS = frozenset({"phash", "shard", "label_source"})
#: JPEGs are validated with DCT scaling down to at least this side (pHash needs ~64 px): the
#: pipeline's default image_size, so its training pixels are cut from this very decode.
VALIDATE_DRAFT = 224
#: pHash: a 32x32 greyscale thumbnail, of whose DCT the lowest 8x8 coefficients are kept.
PHASH_THUMB, PHASH_BITS_SIDE = 32, 8
#: Images are box-reduced to at least this side (and under twice it) before the thumbnail.
PHASH_REDUCED = 64
#: Centre-crop scales hashed per image, so lightly cropped copies still match.
PHASH_SCALES = (1.0, 0.9, 0.8)
#: Up to this many leaders a query compares with all of them (vectorised, ~30 us at 1,000)
#: instead of probing the bands (~190 us); the band probes find the same leaders, faster
#: beyond it.
BRUTE_FORCE_LEADERS = 4096

QUARANTINE_FIELDS = ("uri", "label", "reason", "detail")
#: Photos per decoding task, and the fewest photos worth starting worker processes for.
CHECK_TASK, PROCESS_MIN_ITEMS = 32, 512
#: Near-duplicate groups listed in report.md (report.json lists them all).
MARKDOWN_GROUPS = 50


@dataclass(frozen=True)
class IngestConfig:
    """Settings of the ingest step.

    Attributes:
        val_fraction: share of each class's groups that go to validation.
        test_fraction: share of each class's groups that go to test.
        seed: seed of the split; the same seed and data give the same split.
        limits: images smaller or larger than these are quarantined (the decompression-bomb
            guard among them).
        workers: decoding workers: processes for local files (threads below
            :data:`PROCESS_MIN_ITEMS` photos), threads for ``s3://``; 0 means one per CPU
            core for local files and eight per core for ``s3://`` (each read waits on the
            network).
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
    max_group_size: int = 50

    def __post_init__(self) -> None:
        if self.max_group_size < 2:
            raise ConfigError(f"max_group_size must be >= 2, got {self.max_group_size}")
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
    """One image as listed by a source, and where its label came from
    (``folder``, ``manifest``, ``manual`` or ``relabel_csv``: the lineage's label sources)."""

    uri: str
    label: str
    source: str = "folder"


@dataclass(frozen=True)
class LabelOverride:
    """A label a person gave a photo, which wins over its folder or manifest label.

    Attributes:
        label: the class.
        source: ``manual`` (the scores database's manual labels) or ``relabel_csv``.
    """

    label: str
    source: str = "manual"


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
    label_source: str = "folder"

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
    suspect_groups: list[list[str]] = field(default_factory=list)
    shard_sizes: list[int] = field(default_factory=list)
    #: accepted photos whose content the champion's dataset did not hold (None: no champion known)
    new_since_champion: int | None = None
    #: labels changed by a person's label, per source (manual, relabel_csv)
    label_overrides: dict[str, int] = field(default_factory=dict)
    #: people's labels for photos the source does not list
    label_overrides_unmatched: int = 0
    #: accepted photos per label source (folder, manifest, manual, relabel_csv)
    label_sources: dict[str, int] = field(default_factory=dict)
    #: when the source and the labels were read (UTC, ISO 8601): labels given later are new
    ingested_at: str = ""

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
            "Labels by source: " + (", ".join(f"{k} {v}" for k, v in sorted(self.label_sources.items())) or "-")
            + "; overridden by people: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.label_overrides.items())) or "none")
            + (f" ({self.label_overrides_unmatched} labels matched no listed photo)"
               if self.label_overrides_unmatched else "") + ".",
            "",
            "New since the champion's dataset: "
            + ("unknown (no champion dataset)" if self.new_since_champion is None
               else f"{self.new_since_champion} of {self.accepted} photos."),
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
        if self.suspect_groups:
            lines += ["", f"**{len(self.suspect_groups)} suspect group(s)** larger than max_group_size "
                      "(look-alikes that may not be copies; check them):", ""]
            lines += [f"- {len(g)} photos, e.g. {', '.join(g[:3])}" for g in self.suspect_groups]
        if self.near_duplicate_groups:
            shown = self.near_duplicate_groups[:MARKDOWN_GROUPS]
            lines += ["", "Near-duplicate groups (each kept within one split"
                      + (f"; first {len(shown)} of {len(self.near_duplicate_groups)}, all in report.json"
                         if len(shown) < len(self.near_duplicate_groups) else "") + "):", ""]
            lines += [f"- {', '.join(g[:10])}" + (f" (+{len(g) - 10} more)" if len(g) > 10 else "")
                      for g in shown]
        return "\n".join(lines) + "\n"


def read_manifest(uri: str) -> list[Item]:
    """Read a CSV (``uri,label`` header) or JSONL manifest into items.

    Raises:
        DataError: a row is not an object, lacks ``uri`` or ``label``, or leaves one empty.
    """
    rows = read_manifest_rows(uri, ("uri", "label"))
    return [Item(row.get("uri"), row.get("label"), "manifest") for row in rows]


def uri_key(uri: str) -> str:
    """A URI as labels are matched on: ``file://`` and relative local paths made absolute."""
    uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    if "://" in uri:
        return uri
    return os.path.abspath(uri)


def read_relabel_overrides(uri: str) -> dict[str, LabelOverride]:
    """The corrected labels of a relabel CSV (``uri``, ``corrected_label``), keyed by :func:`uri_key`.

    Rows with an empty ``corrected_label`` are skipped; a photo answered twice keeps the last.

    Raises:
        DataError: the CSV lacks the columns (names them and the file).
    """
    rows = read_manifest_rows(uri, ("uri",))
    if rows and "corrected_label" not in rows[0].values:
        raise DataError(
            f"{uri}: a relabel CSV needs a corrected_label column (written by relabel-export or "
            "find-label-issues, filled in by moderators)"
        )
    return {
        uri_key(row.get("uri")): LabelOverride(row.get("corrected_label"), "relabel_csv")
        for row in rows
        if row.get("corrected_label")
    }


def manual_label_overrides(rows: Iterable[Mapping[str, Any]]) -> dict[str, LabelOverride]:
    """Overrides from the scores database's manual labels (rows with ``uri`` and ``label``, as
    ``ScoreRepository.manual_labels()`` returns them; the caller reads the database, so
    training needs no database code). Rows without a URI cannot match a photo and are skipped."""
    return {uri_key(str(r["uri"])): LabelOverride(str(r["label"]), "manual") for r in rows if r.get("uri")}


def apply_label_overrides(
    items: Sequence[Item], overrides: Mapping[str, LabelOverride]
) -> tuple[list[Item], dict[str, int], int]:
    """Give each listed photo the label a person gave it, if any.

    Returns:
        (items, how many labels each source changed, how many overrides matched no listed photo).
    """
    if not overrides:
        return list(items), {}, 0
    out: list[Item] = []
    changed: Counter[str] = Counter()
    used: set[str] = set()
    for item in items:
        key = uri_key(item.uri)
        override = overrides.get(key)
        if override is None:
            out.append(item)
            continue
        used.add(key)
        if override.label != item.label:
            changed[override.source] += 1
        out.append(Item(item.uri, override.label, override.source))
    return out, dict(changed), len(set(overrides) - used)


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
    return check_item_pixels(item, limits, None)[0]


def check_item_pixels(
    item: Item, limits: ImageLimits, pixel_size: int | None
) -> tuple[Record | Rejected, np.ndarray | None]:
    """:func:`check_item`, plus, with ``pixel_size``, the accepted image's training pixels:
    exactly ``image_to_array(bytes, pixel_size)``, cut from this very decode when the JPEG
    draft scale is the same for both sizes (always at the pipeline's default size, which
    :data:`VALIDATE_DRAFT` is; a second decode only when it is not)."""
    try:
        data = storage.read_bytes(item.uri)
    except StorageError as e:
        return Rejected(item.uri, item.label, "unreadable", str(e)), None
    try:
        # A draft decode still entropy-decodes the whole JPEG bitstream (so truncation
        # and corruption are caught), but skips most of the inverse DCT.
        header = open_image(data, limits)
        same_pixels = pixel_size is not None and draft_scale(header, VALIDATE_DRAFT) == draft_scale(header, pixel_size)
        img = decode_opened(header, VALIDATE_DRAFT)
        pixels = None
        if pixel_size is not None:
            pixels = fit_square(img, pixel_size) if same_pixels else image_to_array(data, pixel_size, limits)
    except ImageError as e:
        return Rejected(item.uri, item.label, e.reason, str(e)), None
    digest = content_hash(data)
    return Record(item.uri, item.label, digest, img.width, img.height, group=digest, phash=perceptual_hashes(img),
                  label_source=item.source), pixels


def _check_task(
    items: Sequence[Item], first_row: int, limits: ImageLimits, size: int | None, sink: pixels.RowSink | None
) -> list[Record | Rejected]:
    """Check a run of listed photos (rows ``first_row...``); with a sink, write their pixels."""
    fd = sink.open() if sink is not None else None
    try:
        out = []
        for row, item in enumerate(items, start=first_row):
            rec, px = check_item_pixels(item, limits, size)
            if fd is not None and px is not None:
                sink.write(fd, row, px)
            out.append(rec)
        return out
    finally:
        if fd is not None:
            os.close(fd)


def _check_all(
    items: Sequence[Item],
    limits: ImageLimits,
    size: int | None,
    sink: pixels.RowSink | None,
    workers: int,
    *,
    processes: bool,
    progress: bool,
) -> list[Record | Rejected]:
    """:func:`check_item_pixels` of every item, in order, on ``workers`` processes or threads.

    Processes for local files: per photo, the Python between the C calls (headers, EXIF,
    hashes) holds the GIL long enough that two threads on two cores decode only ~1.1x as fast
    as one once the pixels are kept. Threads for object stores, whose reads mostly wait on
    the network. At most four tasks per worker are in flight, so memory holds a bounded
    number of futures and results however many photos there are.
    """
    tasks = [(start, min(start + CHECK_TASK, len(items))) for start in range(0, len(items), CHECK_TASK)]
    pool = (ProcessPoolExecutor(workers, mp_context=process_context()) if processes and workers > 1
            else ThreadPoolExecutor(max_workers=workers))
    results: list[Record | Rejected] = []
    pending: deque[Future] = deque()
    with pool, tqdm(total=len(items), desc="ingest", unit="img", disable=not progress) as bar:
        for a, b in tasks:  # a task is submitted as the oldest is taken: workers never wait on a barrier
            pending.append(pool.submit(_check_task, items[a:b], a, limits, size, sink))
            if len(pending) >= 4 * workers:
                results += _take(pending.popleft(), bar)
        while pending:
            results += _take(pending.popleft(), bar)
    return results


def _take(future: Future, bar: tqdm) -> list[Record | Rejected]:
    done = future.result()
    bar.update(len(done))
    return done


def perceptual_hashes(img: Image.Image) -> str:
    """64-bit pHashes of the image's centre crops at :data:`PHASH_SCALES`, as hex words.

    Each word is ``imagehash.phash`` of that crop of the box-reduced image (a test holds
    them equal), computed for the three crops at once: one batched DCT instead of three
    calls. pHash looks at a 32x32 thumbnail, so the image is first box-reduced to
    :data:`PHASH_REDUCED`-2x that side (cheap, in C): the three Lanczos resamplings of
    ~128 px images took a sixth of ingest's time, of ~64 px ones a quarter of that.
    """
    from scipy.fft import dct

    gray = img.convert("L")
    factor = min(gray.size) // PHASH_REDUCED
    if factor > 1:
        gray = gray.reduce(factor)
    width, height = gray.size
    thumbs = np.empty((len(PHASH_SCALES), PHASH_THUMB, PHASH_THUMB), dtype=np.uint8)
    for i, scale in enumerate(PHASH_SCALES):
        left, top = int(width * (1 - scale) / 2), int(height * (1 - scale) / 2)
        crop = gray if scale == 1.0 else gray.crop((left, top, width - left, height - top))
        thumbs[i] = np.asarray(crop.resize((PHASH_THUMB, PHASH_THUMB), Image.Resampling.LANCZOS))
    low = dct(dct(thumbs.astype(np.float64), axis=1), axis=2)[:, :PHASH_BITS_SIDE, :PHASH_BITS_SIDE]
    low = low.reshape(len(PHASH_SCALES), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return " ".join(row.tobytes().hex() for row in np.packbits(bits, axis=1))


def hash_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Smallest Hamming distance between any hash of ``a`` and any of ``b``."""
    return min((x ^ y).bit_count() for x in a for y in b)


def _bit_masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set (the probes of one band)."""
    masks = [0]
    for k in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(width), k)]
    return np.array(masks, dtype=np.uint64)


def _band_plan(max_distance: int, n: int) -> tuple[list[tuple[int, int]], int]:
    """(shift, width) of each band and the probe radius per band, for ``n`` indexed items.

    Multi-index hashing: two 64-bit hashes within ``d`` bits differ in at most ``d // m`` bits
    of at least one of ``m`` bands (pigeonhole). Each query probes every band value within
    that radius; fewer, wider bands mean more probes but emptier buckets. The band count is
    the one with the least expected work (probes + random candidates) for ``n`` items.
    """
    best: tuple[float, int] | None = None
    for m in range(1, 9):
        width, radius = 64 // m, max_distance // m
        probes = 3 * m * sum(comb(width, k) for k in range(radius + 1))  # 3 hashes per photo
        # measured in CPython: a band lookup costs ~30 probes, a bucket hit ~20 (set.update)
        cost = 30 * 3 * m + probes * (1 + 20 * 3 * n / 2.0**width)
        if best is None or cost < best[0]:
            best = (cost, m)
    m = best[1] if best else 1
    bounds = np.linspace(0, 64, m + 1).astype(int).tolist()
    return [(bounds[b], bounds[b + 1] - bounds[b]) for b in range(m)], max_distance // m


class LeaderIndex:
    """The representatives ("leaders") of near-duplicate groups, searchable by Hamming radius.

    Memory is O(leaders); a query probes a fixed number of band values and compares only the
    leaders found there (vectorised), so grouping ``n`` photos costs about ``n`` queries, not
    ``n**2`` comparisons.
    """

    def __init__(self, max_distance: int, capacity: int, hashes_per_item: int = len(PHASH_SCALES)) -> None:
        self.max_distance = max_distance
        self.bands, radius = _band_plan(max_distance, capacity)
        self.masks = [_bit_masks(width, radius) for _, width in self.bands]
        self.buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in self.bands]
        self.hashes = np.zeros((max(capacity, 1), hashes_per_item), dtype=np.uint64)
        self.size = 0

    def _band(self, h: int, b: int) -> int:
        shift, width = self.bands[b]
        return (h >> shift) & ((1 << width) - 1)

    def add(self, hashes: Sequence[int]) -> int:
        """Index a new leader; returns its id."""
        i = self.size
        if i == len(self.hashes):
            self.hashes = np.concatenate([self.hashes, np.zeros_like(self.hashes)])
        self.hashes[i, : len(hashes)] = hashes
        self.hashes[i, len(hashes) :] = hashes[0]
        for b, bucket in enumerate(self.buckets):
            for value in {self._band(h, b) for h in hashes}:
                bucket[value].append(i)
        self.size += 1
        return i

    def nearest(self, hashes: Sequence[int]) -> tuple[int, int] | None:
        """(leader id, distance) of the nearest leader within the radius (lowest id on ties)."""
        if self.size <= BRUTE_FORCE_LEADERS:  # comparing with every leader is cheaper than probing
            ids = np.arange(self.size)
        else:
            found: set[int] = set()
            for b, bucket in enumerate(self.buckets):
                shift, width = self.bands[b]
                values = np.array([(h >> shift) & ((1 << width) - 1) for h in hashes], dtype=np.uint64)
                probes = set(np.bitwise_xor.outer(values, self.masks[b]).ravel().tolist())
                # the set operations and the gathering run in C: no Python loop per probe or hit
                found.update(chain.from_iterable(map(bucket.__getitem__, bucket.keys() & probes)))
            ids = np.fromiter(found, dtype=np.int64, count=len(found))
        if not len(ids):
            return None
        query = np.array(hashes, dtype=np.uint64)
        dist = np.bitwise_count(self.hashes[ids][:, :, None] ^ query[None, None, :]).min(axis=(1, 2))
        best = np.lexsort((ids, dist))[0]
        if dist[best] > self.max_distance:
            return None
        return int(ids[best]), int(dist[best])


@dataclass(frozen=True)
class Grouping:
    """Near-duplicate groups found by :func:`group_near_duplicates`."""

    groups: list[list[str]]
    suspect: list[list[str]]


#: Hex digits of a content hash that name a photo or group in the lineage (128 bits).
KEY_HEX = 32


def group_near_duplicates(
    records: Sequence[Record],
    max_distance: int,
    max_group_size: int = 50,
    previous: Mapping[str, str] | None = None,
) -> Grouping:
    """Give near-identical records one ``group``: the content hash of its representative.

    Photos the previous data set held (``previous``: photo key -> group key, the first
    :data:`KEY_HEX` hex digits of each, from the champion's lineage) keep their group, so a
    group's key, and with it its split, stays put as the collection grows. The other photos
    are visited in content-hash order; each joins the nearest representative (an old group's
    or a new one's) within ``max_distance`` bits, or becomes one. A photo joins a group only
    when it is near the group's representative, never through a chain of members (the old
    union-find made one 4,687-photo group out of 10,000 synthetic photos), so any two
    members are within ``2 * max_distance`` bits.

    Returns:
        the groups of more than one URI, and those larger than ``max_group_size`` (suspect:
        a look-alike class such as blank menu pages, worth a look before training).
    """
    previous = previous or {}
    for rec in records:
        rec.group = rec.sha256
    if max_distance < 0 or len(records) < 2:
        return Grouping([], [])
    ordered = sorted(records, key=lambda r: r.sha256)
    by_key = {r.sha256[:KEY_HEX]: r for r in ordered}
    index = LeaderIndex(max_distance, capacity=len(ordered))
    leaders: list[str] = []  # leader id -> group key
    members: dict[str, list[Record]] = defaultdict(list)
    new: list[Record] = []
    for rec in ordered:
        old_group = previous.get(rec.sha256[:KEY_HEX])
        if old_group is None:
            new.append(rec)
            continue
        representative = by_key.get(old_group)
        rec.group = representative.sha256 if representative else old_group
        members[rec.group].append(rec)
        if rec is representative and rec.hashes:
            index.add(rec.hashes)
            leaders.append(rec.group)
    for rec in new:
        hashes = rec.hashes
        if not hashes:
            continue
        hit = index.nearest(hashes)
        if hit is None:
            index.add(hashes)
            leaders.append(rec.sha256)
        else:
            rec.group = leaders[hit[0]]
        members[rec.group].append(rec)
    groups = sorted(sorted(r.uri for r in recs) for recs in members.values() if len(recs) > 1)
    suspect = [g for g in groups if len(g) > max_group_size]
    return Grouping(groups, suspect)


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


def split_position(group: str, seed: int) -> float:
    """Where a group falls in [0, 1): a hash of its key salted by the dataset's seed.

    A pure function of the group's own key (its first :data:`KEY_HEX` hex digits, 128 bits,
    which the lineage keeps), so adding photos never moves an existing group to another
    split (the old seeded permutation reshuffled every group whenever one was added,
    putting the champion's training photos into the next test split).
    """
    digest = hashlib.sha256(f"{seed}:{group[:KEY_HEX]}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(position: float, val_fraction: float, test_fraction: float) -> str:
    """test for the lowest ``test_fraction`` of positions, then val, then train."""
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"


def assign_splits(records: Sequence[Record], cfg: IngestConfig) -> list[Record]:
    """Split by group: every member of a group lands in the split its key hashes to.

    Each group's split is :func:`split_of` its :func:`split_position`, so on many photos
    every class's shares approach the asked fractions (binomially: on 1,000 photos of a
    class a 15% share has a standard deviation of 1.1 points). Small classes are the
    exception: a class whose hashes leave val or test empty lends its lowest-positioned
    groups to them (at least one group each when the fraction is above 0); such a lent
    group can return to train as the class grows. A group is filed under its most common
    label, so a group that mixes labels still stays whole.

    Raises:
        DataError: a class has too few groups to fill train, val and test.
    """
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.group].append(rec)
    by_stratum: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for key, recs in groups.items():
        label = Counter(r.label for r in recs).most_common(1)[0][0]
        by_stratum[label].append((split_position(key, cfg.seed), key))
    out: list[Record] = []
    for label in sorted(by_stratum):
        ranked = sorted(by_stratum[label])
        splits = [split_of(pos, cfg.val_fraction, cfg.test_fraction) for pos, _ in ranked]
        n_test = max(splits.count("test"), int(cfg.test_fraction > 0))
        end_val = max(splits.count("test") + splits.count("val"), n_test + int(cfg.val_fraction > 0))
        if end_val >= len(ranked):
            raise DataError(
                f"class {label!r} has only {len(ranked)} distinct image group(s): it needs at least "
                f"{end_val + 1} to fill train/val/test; add images or lower the fractions"
            )
        for rank, (_, key) in enumerate(ranked):
            split = "test" if rank < n_test else "val" if rank < end_val else "train"
            for rec in groups[key]:
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
                label_source=row.get("label_source") or "folder",
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
    champion_data: DatasetLineage | None = None,
    label_overrides: Mapping[str, LabelOverride] | None = None,
    pixel_cache: Path | None = None,
    pixel_size: int = 227,
) -> IngestReport:
    """Validate, de-duplicate and split every image of ``source``.

    Args:
        source: class-folder root (local or s3://) or a CSV/JSONL manifest.
        manifest_path: where the split manifest CSV is written.
        report_dir: folder for ``report.json``, ``report.md`` and ``quarantine.csv``.
        cfg: split and quality settings.
        progress: show a progress bar.
        champion_data: the champion's data set (its lineage), to count the photos that are new.
        label_overrides: labels people gave photos, keyed by :func:`uri_key` (the scores
            database's manual labels, a relabel CSV's corrections); they win over the folder
            or manifest label, and the manifest's ``label_source`` column records which won.
        pixel_cache: also keep every accepted photo's ``image_to_array(bytes, pixel_size)``
            pixels, from the decode that validates it, in this folder: one file per shard
            (:mod:`clazzify.training.pixels`), so ``build_hdf5(..., pixel_cache=...)`` copies
            them instead of decoding every photo again.
        pixel_size: the side of the cached pixels (the HDF5 step's ``image_size``).

    Raises:
        StorageError: the source cannot be reached.
        DataError: nothing usable was found, or a class is too small to split.
    """
    started = datetime.now(UTC).isoformat()
    storage.preflight(source)
    items = list_source(source)
    if not items:
        raise DataError(f"no files found under {source}")
    items, overridden, unmatched = apply_label_overrides(items, label_overrides or {})
    remote = storage.is_s3(source)
    workers = cfg.workers or (8 if remote else 1) * (os.cpu_count() or 1)
    limits = cfg.limits
    if pixel_cache is not None and not 16 <= pixel_size <= 1024:
        raise ConfigError(f"pixel_size must be within [16, 1024] (the HDF5 step's image_size), got {pixel_size}")
    size = pixel_size if pixel_cache is not None else None
    listing = (pixels.CacheFile(pixel_cache / "listing.h5.partial", len(items), pixel_size, limits)
               if pixel_cache is not None else None)
    results = _check_all(items, limits, size, listing.sink if listing else None, workers,
                         processes=not remote and len(items) >= PROCESS_MIN_ITEMS, progress=progress)
    if listing is not None:
        listing.close([r.sha256 if isinstance(r, Record) else "" for r in results])
    accepted = [r for r in results if isinstance(r, Record)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    kept, conflicts, dup_groups = remove_duplicates(accepted)
    rejected += conflicts
    grouping = group_near_duplicates(kept, cfg.near_duplicate_distance, cfg.max_group_size,
                                     champion_data.group_keys() if champion_data is not None else None)
    if not kept:
        reasons = Counter(r.reason for r in rejected)
        raise DataError(f"no usable image in {source}: all {len(items)} quarantined {dict(reasons)}")
    split = assign_splits(kept, cfg)
    shard_sizes = assign_shards(split, cfg.shard_size)
    if listing is not None:
        pixels.deal_into_shards(listing.path, pixel_cache, [(r.sha256, r.shard) for r in split])

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
        near_duplicate_groups=grouping.groups,
        suspect_groups=grouping.suspect,
        shard_sizes=shard_sizes,
        new_since_champion=None if champion_data is None
        else int((~champion_data.holds(r.sha256 for r in split)).sum()),
        label_overrides=overridden,
        label_overrides_unmatched=unmatched,
        label_sources=dict(Counter(r.label_source for r in split)),
        ingested_at=started,
    )
    (report_dir / "report.json").write_text(report.to_json())
    (report_dir / "report.md").write_text(report.to_markdown())
    return report
