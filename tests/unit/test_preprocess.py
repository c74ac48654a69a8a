import json
import os

import h5py
import numpy as np
import pytest

from clazzify.core import storage
from clazzify.core.errors import ConfigError
from clazzify.core.imaging import image_to_array
from clazzify.training.data import block_index
from clazzify.training.ingest import IngestConfig, ingest_images, read_split_manifest
from clazzify.training.pixels import cache_file
from clazzify.training.preprocess import PreprocessConfig, augment_variant, build_hdf5

pytestmark = pytest.mark.unit


def test_hdf5_layout_and_parity(hdf5_dir):
    with h5py.File(hdf5_dir / "train.h5") as f:
        attrs = dict(f.attrs)
    assert json.loads(attrs["class_names"]) == ["ambiance", "food", "human", "menu"]
    assert int(attrs["image_size"]) == 32 and attrs["fingerprint"]
    total = 0
    for split in ("train", "val", "test"):
        with h5py.File(hdf5_dir / f"{split}.h5") as f:
            images, labels, uris = f["images"], f["labels"][:], f["uris"].asstr()[:]
            assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
            assert images.chunks is None and len(labels) == len(uris) == images.shape[0]  # contiguous: mapped
            assert set(labels) == {0, 1, 2, 3}
            total += len(labels)
            # Parity: each row is exactly what the shared decode path makes of the file.
            for i in (0, len(uris) - 1):
                np.testing.assert_array_equal(images[i], image_to_array(storage.read_bytes(uris[i]), 32))
    assert total == 24 * 4  # the bad files and the duplicate are not there
    summary = json.loads((hdf5_dir / "summary.json").read_text())
    assert sum(summary["counts"].values()) == total


def test_training_rows_are_mixed(hdf5_dir):
    with h5py.File(hdf5_dir / "train.h5") as f:
        labels = f["labels"][:]
    # a label-sorted file would make every contiguous batch one class
    assert len(set(labels[:16])) > 1


def test_augment_copies_and_parallel_build(demo_dir, tmp_path):
    ingest_images(str(demo_dir), tmp_path / "m.csv", tmp_path, IngestConfig(seed=3), progress=False)
    cfg = PreprocessConfig(image_size=32, augment_copies=2, workers=2, task_size=8)
    paths = build_hdf5(tmp_path / "m.csv", tmp_path / "data", cfg, progress=False)
    n_train = sum(r.split == "train" for r in read_split_manifest(tmp_path / "m.csv"))
    with h5py.File(paths["train"]) as f:
        assert f["images"].shape[0] == n_train * 3
        variant = f["variant"][:]
        assert (np.bincount(variant) == n_train).all()
        uris = f["uris"].asstr()[:]
        originals = np.flatnonzero(variant == 0)
        i = originals[0]
        np.testing.assert_array_equal(f["images"][i], image_to_array(storage.read_bytes(uris[i]), 32))
        assert not np.array_equal(f["images"][i], f["images"][i + 1])  # a real variant
        assert uris[i] == uris[i + 1]
    with h5py.File(paths["val"]) as f:
        assert (f["variant"][:] == 0).all()  # only training data is augmented


def test_augment_variant_is_seeded():
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8))
    a = augment_variant(img, 32, np.random.default_rng(7))
    b = augment_variant(img, 32, np.random.default_rng(7))
    assert a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs", [{"image_size": 8}, {"augment_copies": -1}, {"task_size": 0}, {"workers": -2}])
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


@pytest.mark.parametrize(("rows", "block"), [([10], 4), ([3, 0, 7], 3), ([64], 32)])
def test_block_index_covers_every_row_once(rows, block):
    blocks = block_index(rows, block)
    seen = [(f, r) for f, start, stop in blocks for r in range(start, stop)]
    assert sorted(seen) == [(f, r) for f, n in enumerate(rows) for r in range(n)]


def test_block_index_segments():
    blocks = block_index([10, 10], 4, segments=[(0, 2, 7), (1, 0, 3)])
    assert blocks.tolist() == [[0, 2, 6], [0, 6, 7], [1, 0, 3]]


@pytest.mark.parametrize(("size", "shard_size"), [(32, 0), (64, 40)])  # 64: 3 shards
def test_pixel_cache_builds_the_same_files_in_one_decode_pass(demo_dir, tmp_path, size, shard_size, monkeypatch):
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    cfg_in = IngestConfig(seed=3, shard_size=shard_size)
    ingest_images(str(demo_dir), plain / "m.csv", plain, cfg_in, progress=False)
    report = ingest_images(str(demo_dir), cached / "m.csv", cached, cfg_in, progress=False,
                           pixel_cache=cached / "px", pixel_size=size)
    # The cache changes nothing ingest decides: same manifest, the truncated JPEG still quarantined.
    assert (plain / "m.csv").read_text() == (cached / "m.csv").read_text()
    assert report.quarantined.get("corrupt", 0) >= 1
    records = read_split_manifest(cached / "m.csv")
    # One file per shard: each holds its shard's photos, and their pixels are image_to_array's.
    assert sorted(p.name for p in (cached / "px").iterdir()) == [f"pixels-{k:05d}.h5" for k in report.shards]
    for shard in report.shards:
        with h5py.File(cache_file(cached / "px", shard)) as f:
            digests = [d for d in f["sha256"].asstr()[:] if d]
            assert int(f.attrs["image_size"]) == size
            ours = [r.sha256 for r in records if r.shard == shard]
            assert set(ours) <= set(digests) and (len(report.shards) == 1 or digests == ours)
            row = {d: i for i, d in enumerate(f["sha256"].asstr()[:]) if d}
            for rec in [r for r in records if r.shard == shard][::5]:
                np.testing.assert_array_equal(f["images"][row[rec.sha256]],
                                              image_to_array(storage.read_bytes(rec.uri), size))
    cfg = PreprocessConfig(image_size=size, workers=1)
    for shard in [None, *report.shards[1:]]:
        a = build_hdf5(cached / "m.csv", tmp_path / "a", cfg, progress=False, shard=shard)
        with monkeypatch.context() as m:  # from the cache, nothing is decoded again
            m.setattr("clazzify.training.preprocess.image_to_array", lambda *a: pytest.fail("decoded again"))
            b = build_hdf5(cached / "m.csv", tmp_path / "b", cfg, progress=False, shard=shard,
                           pixel_cache=cached / "px")
        summary = json.loads((tmp_path / "b" / ("summary.json" if shard is None else f"summary-{shard:05d}.json"))
                             .read_text())
        assert summary["from_pixel_cache"] == sum(summary["counts"].values()) > 0
        for split in a:
            with h5py.File(a[split]) as fa, h5py.File(b[split]) as fb:
                np.testing.assert_array_equal(fa["images"][:], fb["images"][:])
                np.testing.assert_array_equal(fa["labels"][:], fb["labels"][:])
                assert fa.attrs["fingerprint"] == fb.attrs["fingerprint"]
    # A cache of another size is ignored (everything decoded), not misused.
    c = build_hdf5(cached / "m.csv", tmp_path / "c", PreprocessConfig(image_size=48, workers=1), progress=False,
                   pixel_cache=cached / "px")
    d = build_hdf5(cached / "m.csv", tmp_path / "d", PreprocessConfig(image_size=48, workers=1), progress=False)
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["from_pixel_cache"] == 0
    for split in c:
        with h5py.File(c[split]) as fc, h5py.File(d[split]) as fd:
            np.testing.assert_array_equal(fc["images"][:], fd["images"][:])


def test_pixel_cache_rejects_a_bad_size(demo_dir, tmp_path):
    with pytest.raises(ConfigError, match="pixel_size must be within"):
        ingest_images(str(demo_dir), tmp_path / "m.csv", tmp_path, IngestConfig(seed=3), progress=False,
                      pixel_cache=tmp_path / "px", pixel_size=8)


def test_pixel_cache_reads_rows_of_any_layout_and_refuses_a_cut_file(tmp_path):
    """Rows are read with preadv from a contiguous cache, through h5py from any other layout;
    a cache cut short is an error, never rows of garbage."""
    from clazzify.core.imaging import ImageLimits
    from clazzify.training.pixels import CacheFile, PixelCache

    rows = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    listing = CacheFile(tmp_path / "plain.h5", 4, 8, ImageLimits())
    fd = listing.sink.open()
    listing.sink.write(fd, 0, rows)
    os.close(fd)
    listing.close(["a", "b", "c", "d"])
    with h5py.File(tmp_path / "plain.h5") as src, h5py.File(tmp_path / "chunked.h5", "w") as dst:
        dst.create_dataset("images", data=src["images"][:], chunks=(1, 8, 8, 3), compression="gzip")
        dst.create_dataset("sha256", data=src["sha256"][:])
        dst.attrs.update(src.attrs)
    for name in ("plain.h5", "chunked.h5"):
        cache = PixelCache([tmp_path / name], 8, ImageLimits())
        np.testing.assert_array_equal(cache.block(["c", "a"]), rows[[2, 0]])
        assert cache.block(["a", "zz"]) is None
        cache.close()
    with open(tmp_path / "plain.h5", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "plain.h5") - 100)
    with pytest.raises(OSError, match="truncated"):
        PixelCache([tmp_path / "plain.h5"], 8, ImageLimits())


def test_every_entry_point_reads_one_image_size_default():
    """The pipeline, PreprocessConfig, ModelSpec and `clazzify preprocess` all default to the
    default recipe's input side, read from one place (they once said 224 and 227)."""
    from clazzify.cli import main
    from clazzify.training.models import DEFAULT_IMAGE_SIZE, ModelSpec
    from pipelines.train import pipeline_parameters

    option = next(p for p in main.commands["preprocess"].params if p.name == "image_size")
    defaults = {"pipeline": pipeline_parameters()["image_size"].default,
                "PreprocessConfig": PreprocessConfig().image_size, "ModelSpec": ModelSpec().image_size,
                "clazzify preprocess": option.default}
    assert defaults == dict.fromkeys(defaults, DEFAULT_IMAGE_SIZE) and DEFAULT_IMAGE_SIZE == 224
