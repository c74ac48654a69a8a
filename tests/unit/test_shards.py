"""Sharded preprocessing: ingest deals images into shards, each shard becomes its own
HDF5 files, and training/evaluation read every shard as one data set. The shards must
cover every accepted image exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from clazzify.core.errors import ConfigError, DataError
from clazzify.training.data import inspect_split, read_rows, split_files
from clazzify.training.ingest import SPLITS, IngestConfig, Record, assign_shards, ingest_images, read_split_manifest
from clazzify.training.label_issues import outside
from clazzify.training.preprocess import PreprocessConfig, build_hdf5

pytestmark = pytest.mark.unit


def records(n: int) -> list[Record]:
    splits = ["train"] * (n - n // 3) + ["val"] * (n // 6) + ["test"] * (n // 3 - n // 6)
    return [
        Record(uri=f"f{i}.jpg", label="ab"[i % 2], sha256=f"{i:064x}", width=64, height=64, group=str(i),
               split=split)
        for i, split in enumerate(splits)
    ]


@pytest.mark.parametrize(
    ("n", "shard_size", "expected"),
    [
        (10, 0, [10]),  # 0 = one shard
        (10, 10, [10]),
        (10, 4, [4, 3, 3]),  # ceil(10 / 4) = 3 shards, sizes within one of each other
        (10, 1, [1] * 10),
        (10, 100, [10]),
        (0, 5, [0]),
    ],
)
def test_shard_sizes(n, shard_size, expected):
    recs = records(n)
    assert assign_shards(recs, shard_size) == expected
    assert Counter(r.shard for r in recs) == {i: size for i, size in enumerate(expected) if size}


def test_every_shard_gets_every_split_and_class():
    recs = sorted(records(120), key=lambda r: (SPLITS.index(r.split), r.label, r.uri))
    sizes = assign_shards(recs, 40)
    assert sizes == [40, 40, 40]
    for shard in range(3):
        mine = [r for r in recs if r.shard == shard]
        assert {r.split for r in mine} == set(SPLITS)
        assert {r.label for r in mine} == {"a", "b"}


def test_negative_shard_size_is_refused():
    with pytest.raises(ConfigError, match="shard_size"):
        IngestConfig(shard_size=-1)


@pytest.fixture(scope="module")
def sharded(demo_dir: Path, tmp_path_factory) -> tuple[Path, list[Path]]:
    """The demo set ingested into 3 shards, each shard built by its own call into its own
    folder, as the pipeline's ParallelFor tasks do."""
    work = tmp_path_factory.mktemp("shards")
    report = ingest_images(str(demo_dir), work / "m.csv", work / "r", IngestConfig(seed=3, shard_size=40),
                           progress=False)
    assert report.shard_sizes == [32, 32, 32] and report.shards == [0, 1, 2]
    assert "3 shard(s) of 32-32 images" in report.to_markdown()
    cfg = PreprocessConfig(image_size=32, workers=1, augment_copies=1)
    dirs = []
    for shard in report.shards:
        paths = build_hdf5(work / "m.csv", work / f"shard{shard}", cfg, shard=shard, progress=False)
        assert {p.name for p in paths.values()} == {f"{s}-{shard:05d}.h5" for s in SPLITS}
        dirs.append(work / f"shard{shard}")
    return work / "m.csv", dirs


def test_shards_cover_every_image_exactly_once(sharded):
    manifest, dirs = sharded
    expected = {(r.uri, r.split) for r in read_split_manifest(manifest)}
    seen: Counter = Counter()
    fingerprints, class_names = set(), set()
    for split in SPLITS:
        for path in split_files(dirs, split):
            with h5py.File(path) as f:
                variant = f["variant"][:]
                for uri in f["uris"].asstr()[variant == 0]:
                    seen[(uri, split)] += 1
                fingerprints.add(f.attrs["fingerprint"])
                class_names.add(f.attrs["class_names"])
    assert set(seen) == expected
    assert set(seen.values()) == {1}  # nothing twice
    assert len(fingerprints) == 1 and len(class_names) == 1  # the shards agree


def test_a_missing_shard_or_a_double_read_is_an_error(sharded, tmp_path):
    manifest, dirs = sharded
    with pytest.raises(DataError, match="has no shard 7: its shards are \\[0, 1, 2\\]"):
        build_hdf5(manifest, tmp_path, PreprocessConfig(image_size=32, workers=1), shard=7, progress=False)
    build_hdf5(manifest, dirs[0], PreprocessConfig(image_size=32, workers=1), progress=False)  # whole split too
    try:
        with pytest.raises(DataError, match="read twice"):
            split_files(dirs, "train")
    finally:
        for split in SPLITS:
            (dirs[0] / f"{split}.h5").unlink()
    with pytest.raises(DataError, match="no train.h5"):
        split_files([tmp_path], "train")


def test_read_rows_follows_global_order_over_files(sharded):
    _, dirs = sharded
    paths = split_files(dirs, "train")
    info = inspect_split(paths)
    everything = np.concatenate([h5py.File(p)["labels"][:] for p in paths])
    rows = np.array([info.total - 1, 0, info.rows[0], 5, 5])
    np.testing.assert_array_equal(read_rows(paths, rows, "labels"), everything[rows])
    with pytest.raises(DataError, match="out of range"):
        read_rows(paths, np.array([info.total]), "labels")


@pytest.mark.parametrize(
    ("rows", "held_out", "expected"),
    [
        ([10], (0, 5), [(0, 5, 10)]),
        ([10, 10], (5, 15), [(0, 0, 5), (1, 5, 10)]),
        ([10, 10], (10, 20), [(0, 0, 10)]),
        ([4, 4, 4], (3, 9), [(0, 0, 3), (2, 1, 4)]),
    ],
)
def test_out_of_fold_segments_span_files(rows, held_out, expected):
    assert outside(rows, held_out) == expected


@pytest.mark.slow
def test_training_and_evaluation_read_every_shard(sharded, tmp_path):
    from clazzify.training.evaluate import evaluate_model
    from clazzify.training.train import TrainConfig, train_model

    _, dirs = sharded
    cfg = TrainConfig(architecture="compact", epochs=1, batch_size=16, patience=0)
    result = train_model(dirs, tmp_path / "model", cfg, verbose=0)
    n_train = inspect_split(split_files(dirs, "train")).total
    assert sum(result.class_counts.values()) == n_train
    metrics = evaluate_model(result.bundle_dir, split_files(dirs, "test"), tmp_path / "eval")
    assert metrics.n == inspect_split(split_files(dirs, "test")).total
    assert (tmp_path / "eval" / "misclassified.png").is_file()


@pytest.mark.slow
def test_label_issues_score_every_photo_of_every_shard(sharded, tmp_path):
    import csv

    from clazzify.training.label_issues import LabelIssueConfig, find_label_issues

    _, dirs = sharded
    paths = split_files(dirs, "train")
    photos = set()
    for path in paths:
        with h5py.File(path) as f:
            photos |= set(f["uris"].asstr()[f["variant"][:] == 0])
    cfg = LabelIssueConfig(folds=2, epochs=1, batch_size=16, grid=4)
    report = find_label_issues(dirs, tmp_path, cfg, progress=False)
    assert report.scored == len(photos)  # augmented copies are not scored twice
    rows = list(csv.DictReader((tmp_path / "label_issues.csv").open()))
    assert {r["uri"] for r in rows} <= photos
