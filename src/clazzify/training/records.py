"""The rows ingest writes and the later steps read: :class:`Record` (one line of the split
manifest), :class:`Rejected` (one line of ``quarantine.csv``) and :func:`read_split_manifest`.

They sit below the ingest step so that preprocessing and the lineage read a manifest without
importing ingest (which imports the lineage: the cycle this module broke).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from clazzify.core.errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = (
    "uri", "label", "split", "sha256", "width", "height", "group", "phash", "shard", "label_source",
    "source",
)
#: Columns a split manifest may lack (older manifests); they read as the field default.
OPTIONAL_FIELDS = frozenset({"phash", "shard", "label_source", "source"})
#: Hex digits of a content hash that name a photo or group in the lineage (128 bits).
KEY_HEX = 32


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
    #: where the photo came from (:attr:`clazzify.training.listing.Item.origin`): the gate's slices
    source: str = ""

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


def read_split_manifest(path: Path) -> list[Record]:
    """Read a split manifest written by :func:`clazzify.training.ingest.ingest_images`."""
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
                source=row.get("source") or "",
            )
            for row in reader
        ]
