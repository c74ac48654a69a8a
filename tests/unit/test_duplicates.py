"""training/duplicates.py: exact copies kept once, near-duplicates grouped by perceptual hash."""


import numpy as np
import pytest
from PIL import Image

from clazzify.training.duplicates import group_near_duplicates, remove_duplicates
from clazzify.training.records import Record

pytestmark = pytest.mark.unit


def rec(uri, label, sha, group=None):
    return Record(uri, label, sha, 50, 50, group or sha)


def test_remove_duplicates_keeps_first_and_quarantines_conflicts():
    kept, conflicts, groups = remove_duplicates(
        [rec("b", "x", "h1"), rec("a", "x", "h1"), rec("c", "x", "h2"), rec("d", "y", "h2"), rec("e", "y", "h3")]
    )
    assert [r.uri for r in kept] == ["a", "e"]
    assert sorted(c.uri for c in conflicts) == ["c", "d"]
    assert sorted(map(sorted, groups)) == [["a", "b"], ["c", "d"]]


@pytest.mark.parametrize("compare_all_up_to", [0, 4096])  # 0: band probes; 4096: compare with every leader
def test_leader_index_finds_the_nearest_leader_like_brute_force(monkeypatch, compare_all_up_to):
    from clazzify.training.duplicates import LeaderIndex, hash_distance

    monkeypatch.setattr("clazzify.training.duplicates.BRUTE_FORCE_LEADERS", compare_all_up_to)
    rng = np.random.default_rng(0)
    leaders = [[int(v) for v in rng.integers(0, 2**63, 3, dtype=np.int64)] for _ in range(300)]
    index = LeaderIndex(8, capacity=300)
    for hs in leaders:
        index.add(hs)
    queries = []
    for i in range(200):  # flip up to 10 random bits of one of a leader's hashes
        h = leaders[i][int(rng.integers(3))]
        for bit in rng.choice(64, size=int(rng.integers(0, 11)), replace=False):
            h ^= 1 << int(bit)
        queries.append([h, int(rng.integers(0, 2**63))])
    for q in queries:
        dists = [hash_distance(q, hs) for hs in leaders]
        best = min(range(len(leaders)), key=lambda i: (dists[i], i))
        expected = (best, dists[best]) if dists[best] <= 8 else None
        assert index.nearest(q) == expected


def test_groups_do_not_chain():
    # a chain a - b - c - d, each 6 bits from the next: pairs are near, the ends are not
    chain, h = [], 0
    for step in range(4):
        chain.append(h)
        h ^= (1 << 6) - 1 << (6 * step)
    records = [Record(f"p{i}", "x", f"{i:064x}", 50, 50, "", phash=f"{v:016x}") for i, v in enumerate(chain)]
    grouping = group_near_duplicates(records, 8)
    leader = records[0].sha256
    assert [r.group for r in records] == [leader, leader, records[2].sha256, records[2].sha256]
    assert all(len(g) <= 2 for g in grouping.groups)


def test_old_photos_keep_their_group_when_a_near_copy_sorts_first():
    old = [Record("a", "x", "5" * 64, 50, 50, "", phash=f"{0:016x}"),
           Record("b", "x", "6" * 64, 50, 50, "", phash=f"{0b111:016x}")]
    group_near_duplicates(old, 8)
    assert [r.group for r in old] == ["5" * 64] * 2
    previous = {r.sha256[:32]: r.group[:32] for r in old}
    newcomer = Record("c", "x", "1" * 64, 50, 50, "", phash=f"{0b11:016x}")  # sorts before "5..."
    fresh = [Record(r.uri, r.label, r.sha256, 50, 50, "", phash=r.phash) for r in old] + [newcomer]
    group_near_duplicates(fresh, 8, previous=previous)
    assert [r.group for r in fresh] == ["5" * 64] * 3  # without the memory "1..." would lead
    group_near_duplicates(fresh, 8)
    assert {r.group for r in fresh} == {"1" * 64}


def test_oversized_groups_are_reported_as_suspect():
    records = [Record(f"p{i}", "x", f"{i:064x}", 50, 50, "", phash=f"{1 << (i % 60):016x}") for i in range(12)]
    grouping = group_near_duplicates(records, 8, max_group_size=10)
    assert len(grouping.groups) == 1 and grouping.suspect == grouping.groups


@pytest.mark.parametrize("size", [(40, 50), (64, 64), (300, 200), (1000, 700)])
def test_perceptual_hashes_are_imagehash_phash_of_each_crop(size):
    """The batched pHash gives imagehash.phash's bits for each centre crop of the reduced image."""
    import imagehash

    from clazzify.training.duplicates import PHASH_REDUCED, PHASH_SCALES, perceptual_hashes

    rng = np.random.default_rng(sum(size))
    noise = rng.integers(0, 255, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize(size, Image.Resampling.BILINEAR)
    gray = img.convert("L")
    factor = min(gray.size) // PHASH_REDUCED
    gray = gray.reduce(factor) if factor > 1 else gray
    width, height = gray.size
    expected = []
    for scale in PHASH_SCALES:
        left, top = int(width * (1 - scale) / 2), int(height * (1 - scale) / 2)
        expected.append(str(imagehash.phash(gray.crop((left, top, width - left, height - top)))))
    assert perceptual_hashes(img) == " ".join(expected)
    flat = Image.new("RGB", size, (90, 90, 90))
    assert perceptual_hashes(flat).split()[0] == str(imagehash.phash(flat.convert("L")))
