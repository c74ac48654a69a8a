"""Dataset lineage: which photos (by content hash) a model's data set held, in which split,
with which label and where that label came from.

Written for every training run as ``lineage/dataset.npz`` (a compact artifact: 16 bytes of
SHA-256 per photo, 200,000 photos in about 3.6 MB) and read back for the champion, so that

- evaluation compares champion and challenger only on test photos neither trained on;
- ingest and the retraining trigger count what is new since the champion's dataset.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clazzify.core.errors import DataError
from clazzify.training.records import read_split_manifest

#: Bytes of SHA-256 kept per photo: 128 bits, no collision in any realistic collection.
DIGEST_BYTES = 16
SPLIT_CODES = ("train", "val", "test")
#: Where a photo's label came from (the manifest's ``label_source`` column).
LABEL_SOURCES = ("folder", "manifest", "manual", "relabel_csv")
#: The splits a model learned from: val picks the epoch, so it counts as seen.
SEEN_SPLITS = ("train", "val")
#: Where a run keeps its data set's lineage (an MLflow run artifact).
LINEAGE_ARTIFACT = "lineage/dataset.npz"


def digests(sha256_hex: Iterable[str]) -> np.ndarray:
    """Hex SHA-256 strings -> ``S16`` digests (the lineage's key)."""
    return np.array([bytes.fromhex(h[: 2 * DIGEST_BYTES]) for h in sha256_hex], dtype=f"S{DIGEST_BYTES}")


@dataclass(frozen=True)
class DatasetLineage:
    """One data set, one row per photo (arrays of equal length)."""

    sha: np.ndarray  # S16 digests
    split: np.ndarray  # uint8 codes into SPLIT_CODES
    label: np.ndarray  # int32 indices into class_names
    label_source: np.ndarray  # uint8 codes into LABEL_SOURCES
    group: np.ndarray  # S16 digest of the near-duplicate group's key
    class_names: tuple[str, ...]
    created_at: str = ""  # ISO time the data set was read (manual labels up to then count)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[tuple[str, str, str, str, str]],
        created_at: str = "",
    ) -> DatasetLineage:
        """From ``(sha256, split, label, label_source, group)`` tuples."""
        names = tuple(sorted({r[2] for r in rows}))
        index = {n: i for i, n in enumerate(names)}
        for r in rows:
            if r[1] not in SPLIT_CODES or (r[3] or "folder") not in LABEL_SOURCES:
                raise DataError(f"lineage row {r} has an unknown split or label source")
        return cls(
            sha=digests(r[0] for r in rows),
            split=np.array([SPLIT_CODES.index(r[1]) for r in rows], dtype=np.uint8),
            label=np.array([index[r[2]] for r in rows], dtype=np.int32),
            label_source=np.array([LABEL_SOURCES.index(r[3] or "folder") for r in rows], dtype=np.uint8),
            group=digests(r[4] or r[0] for r in rows),
            class_names=names,
            created_at=created_at,
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(
                f, sha=self.sha, split=self.split, label=self.label, label_source=self.label_source,
                group=self.group, class_names=np.array(self.class_names, dtype=str),
                created_at=np.array(self.created_at),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> DatasetLineage:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    sha=z["sha"], split=z["split"], label=z["label"], label_source=z["label_source"],
                    group=z["group"], class_names=tuple(str(n) for n in z["class_names"]),
                    created_at=str(z["created_at"]),
                )
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path} is not a dataset lineage file (lineage/dataset.npz): {e}") from e

    def __len__(self) -> int:
        return len(self.sha)

    def seen(self) -> np.ndarray:
        """Digests of the photos a model trained on this data set learned from (train + val)."""
        mask = np.isin(self.split, [SPLIT_CODES.index(s) for s in SEEN_SPLITS])
        return self.sha[mask]

    def seen_groups(self) -> np.ndarray:
        """Near-duplicate groups with at least one seen photo."""
        mask = np.isin(self.split, [SPLIT_CODES.index(s) for s in SEEN_SPLITS])
        return np.unique(self.group[mask])

    def group_keys(self) -> dict[str, str]:
        """Photo -> its near-duplicate group, as hex keys (what ingest keeps groups stable by)."""
        def hexed(values: np.ndarray) -> list[str]:  # numpy drops an S16 value's trailing zero bytes
            return [v.ljust(DIGEST_BYTES, b"\0").hex() for v in values.tolist()]

        return dict(zip(hexed(self.sha), hexed(self.group), strict=True))

    def holds(self, sha256_hex: Iterable[str]) -> np.ndarray:
        """For each hex SHA-256: does this data set hold that photo (any split)?"""
        return np.isin(digests(sha256_hex), self.sha)

    def digest(self) -> str:
        """A hash of the whole data set (photos, splits, labels), to name it."""
        h = hashlib.sha256()
        order = np.argsort(self.sha, kind="stable")
        for arr in (self.sha[order], self.split[order], self.label[order]):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(self.class_names).encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        """Counts a person reads: photos per class and split, labels per source."""
        per_class = Counter(self.class_names[i] for i in self.label.tolist())
        per_split = {
            s: dict(Counter(self.class_names[i] for i in self.label[self.split == c].tolist()))
            for c, s in enumerate(SPLIT_CODES)
        }
        sources = Counter(LABEL_SOURCES[i] for i in self.label_source.tolist())
        return {
            "digest": self.digest(),
            "photos": len(self),
            "class_names": list(self.class_names),
            "per_class": dict(sorted(per_class.items())),
            "per_split": per_split,
            "label_sources": dict(sorted(sources.items())),
            "manual_labels": int(sources.get("manual", 0) + sources.get("relabel_csv", 0)),
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2, sort_keys=True)


def lineage_from_manifest(path: Path, created_at: str = "") -> DatasetLineage:
    """The lineage of the data set a split manifest (from ingest) describes."""
    rows = [(r.sha256, r.split, r.label, r.label_source, r.group) for r in read_split_manifest(path)]
    if not rows:
        raise DataError(f"{path} lists no photo: nothing to record")
    return DatasetLineage.from_rows(rows, created_at)


def champion_lineage(
    model_name: str, dest: Path, tracking_uri: str | None = None
) -> tuple[str, DatasetLineage | None] | None:
    """(version, lineage) of ``model_name@champion`` in the MLflow registry at ``tracking_uri``
    (default: the active one); the lineage is None when the champion's run recorded none
    (registered before lineage was kept). None when there is no champion."""
    from clazzify.registry.versions import champion_version, download_run_file

    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)

    mv = champion_version(model_name)
    if mv is None:
        return None
    path = download_run_file(mv.run_id, LINEAGE_ARTIFACT, dest) if mv.run_id else None
    return str(mv.version), DatasetLineage.load(path) if path else None
