"""Splitting by group into train/val/test (a hash of each group's key, stable as data grows)
and dealing the manifest into shards for preprocessing."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Protocol

from clazzify.core.errors import DataError
from clazzify.training.records import KEY_HEX, SPLITS, Record


class SplitSettings(Protocol):
    """What a split needs of the ingest settings (:class:`clazzify.training.ingest.IngestConfig`)."""

    seed: int
    val_fraction: float
    test_fraction: float


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


def assign_splits(records: Sequence[Record], cfg: SplitSettings) -> list[Record]:
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
