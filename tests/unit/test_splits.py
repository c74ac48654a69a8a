"""training/splits.py: a group's split is a hash of its key, stable as the collection grows."""

import hashlib

import numpy as np
import pytest

from clazzify.core.errors import DataError
from clazzify.training.ingest import IngestConfig
from clazzify.training.records import Record
from clazzify.training.splits import assign_splits

pytestmark = pytest.mark.unit


def rec(uri, label, sha, group=None):
    return Record(uri, label, sha, 50, 50, group or sha)


def test_groups_never_span_splits():
    records = [rec(f"{g}-{k}", "x", f"{g}-{k}", group=f"g{g}") for g in range(20) for k in range(3)]
    out = assign_splits(records, IngestConfig(seed=0))
    by_group: dict[str, set[str]] = {}
    for r in out:
        by_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in by_group.values())


def test_small_classes_fill_every_split_or_fail():
    cfg = IngestConfig(val_fraction=0.01, test_fraction=0.01)
    out = assign_splits([rec(str(i), "x", str(i)) for i in range(3)], cfg)
    assert sorted(r.split for r in out) == ["test", "train", "val"]  # each non-zero share gets one
    with pytest.raises(DataError, match="only 2 distinct"):
        assign_splits([rec("a", "x", "1"), rec("b", "x", "2")], IngestConfig())


def test_a_photo_keeps_its_split_as_the_collection_grows():
    def sha(i: int) -> str:
        return hashlib.sha256(b"%d" % i).hexdigest()

    base = [rec(f"u{i}", "ab"[i % 2], sha(i)) for i in range(400)]
    first = {r.uri: r.split for r in assign_splits(base, IngestConfig(seed=3))}
    assert set(first.values()) == {"train", "val", "test"}
    grown = base + [rec(f"n{i}", "abc"[i % 3], sha(10_000 + i)) for i in range(600)]
    second = {r.uri: r.split for r in assign_splits(grown, IngestConfig(seed=3))}
    assert all(second[u] == s for u, s in first.items())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_shares_are_within_three_points_of_the_fractions(seed):
    rng = np.random.default_rng(seed)
    records = [rec(f"u{i}", f"c{i % 4}", rng.bytes(32).hex()) for i in range(4 * 1_000)]
    cfg = IngestConfig(val_fraction=0.15, test_fraction=0.15, seed=seed)
    out = assign_splits(records, cfg)
    for label in ("c0", "c1", "c2", "c3"):
        splits = [r.split for r in out if r.label == label]
        for split, asked in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
            assert abs(splits.count(split) / len(splits) - asked) <= 0.03, (label, split)
