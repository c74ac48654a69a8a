"""Ingest: list a source, validate every image, remove duplicates, split; write the manifests.

This module is the step's orchestration: :mod:`~clazzify.training.listing` lists the source
and applies people's labels, :mod:`~clazzify.training.duplicates` finds exact and near
duplicates, :mod:`~clazzify.training.splits` splits and shards, and
:mod:`~clazzify.training.records` holds the manifest's row and reader.

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
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
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
from clazzify.core.parallel import process_context
from clazzify.training import pixels
from clazzify.training.duplicates import (
    LeaderIndex,
    group_near_duplicates,
    hash_distance,
    perceptual_hashes,
    remove_duplicates,
)
from clazzify.training.lineage import DatasetLineage
from clazzify.training.listing import (
    Item,
    LabelOverride,
    apply_label_overrides,
    list_source,
    manual_label_overrides,
    read_manifest,
    read_relabel_overrides,
    uri_key,
)
from clazzify.training.models import DEFAULT_IMAGE_SIZE
from clazzify.training.records import MANIFEST_FIELDS, SPLITS, Record, Rejected, read_split_manifest
from clazzify.training.splits import assign_shards, assign_splits

#: The ingest step's API; the names it re-exports from the modules it orchestrates (listing,
#: duplicates, splits, records) stay importable from here, where callers found them.
__all__ = [
    "IngestConfig", "IngestReport", "IngestSetup", "Item", "LabelOverride", "LeaderIndex", "MANIFEST_FIELDS",
    "ManualLabelReader", "Record", "Rejected", "SPLITS", "apply_label_overrides", "assign_shards",
    "assign_splits", "check_item", "check_item_pixels", "group_near_duplicates", "hash_distance",
    "ingest_images", "list_source", "manual_label_overrides", "perceptual_hashes", "prepare_ingest",
    "read_manifest", "read_relabel_overrides", "read_split_manifest", "remove_duplicates", "uri_key",
]

#: JPEGs are validated with DCT scaling down to at least this side (pHash needs ~64 px): the
#: pipeline's default image_size, so its training pixels are cut from this very decode.
VALIDATE_DRAFT = DEFAULT_IMAGE_SIZE

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


#: Reads the scores database's manual labels at a URL (``clazzify.scoring``'s
#: ``read_manual_labels``): passed in by the entry point, so training needs no database code.
ManualLabelReader = Callable[[str], Iterable[Mapping]]


@dataclass(frozen=True)
class IngestSetup:
    """What ingest needs besides the source: people's labels and the champion's data set."""

    label_overrides: dict[str, LabelOverride]
    champion_data: DatasetLineage | None = None
    champion_version: str | None = None


def prepare_ingest(
    *,
    labels_from: str | None = None,
    relabel_csv: str | None = None,
    read_manual_labels: ManualLabelReader | None = None,
    champion_model: str | None = None,
    tracking_uri: str | None = None,
    workdir: Path | None = None,
) -> IngestSetup:
    """The ingest step's setup, shared by the pipeline's component and ``clazzify ingest``.

    Args:
        labels_from: scores database URL whose manual labels override folder/manifest labels.
        relabel_csv: relabel CSV whose corrections override every other label (a photo in
            both takes the CSV's).
        read_manual_labels: reads the database's manual labels (needed with ``labels_from``).
        champion_model: registered model whose champion's data set counts what is new.
        tracking_uri: the MLflow store holding that model (default: the active one).
        workdir: where the champion's lineage file is downloaded (default: a new temp folder).

    Raises:
        ConfigError: ``labels_from`` without a reader.
    """
    overrides: dict[str, LabelOverride] = {}
    if labels_from:
        if read_manual_labels is None:
            raise ConfigError(f"labels_from={labels_from!r} needs a manual-label reader (clazzify.scoring)")
        overrides.update(manual_label_overrides(read_manual_labels(labels_from)))
    if relabel_csv:
        overrides.update(read_relabel_overrides(relabel_csv))
    if not champion_model:
        return IngestSetup(overrides)
    import tempfile

    from clazzify.training.lineage import champion_lineage

    found = champion_lineage(champion_model, workdir or Path(tempfile.mkdtemp()), tracking_uri)
    return IngestSetup(overrides, found[1] if found else None, found[0] if found else None)


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
                  label_source=item.source, source=item.origin), pixels


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




def _write_csv(path: Path, fields: Iterable[str], rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


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
    pixel_size: int = DEFAULT_IMAGE_SIZE,
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
