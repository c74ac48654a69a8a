"""Duplicates: exact copies (same bytes) kept once, near-identical photos (perceptual hashes
within a Hamming radius) given one group, so that a photo and its copy never sit in two splits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, combinations
from math import comb

import numpy as np
from PIL import Image

from clazzify.training.records import KEY_HEX, Record, Rejected

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
