import json

import h5py
import numpy as np
import pytest

from clazzify.core import storage
from clazzify.core.errors import ConfigError
from clazzify.core.imaging import image_to_array
from clazzify.training.data import block_index
from clazzify.training.ingest import IngestConfig, ingest_images, read_split_manifest
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
            assert images.chunks[0] <= 32 and len(labels) == len(uris) == images.shape[0]
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
    cfg = PreprocessConfig(image_size=32, augment_copies=2, workers=2, task_size=8, chunk_rows=8)
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


@pytest.mark.parametrize("size", [32, 64])  # 64: pixels cut from ingest's decode; 32: a second decode
def test_pixel_cache_builds_the_same_files_in_one_decode_pass(demo_dir, tmp_path, size, monkeypatch):
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    ingest_images(str(demo_dir), plain / "m.csv", plain, IngestConfig(seed=3), progress=False)
    report = ingest_images(str(demo_dir), cached / "m.csv", cached, IngestConfig(seed=3), progress=False,
                           pixel_cache=cached / "pixels.h5", pixel_size=size)
    # The cache changes nothing ingest decides: same manifest, the truncated JPEG still quarantined.
    assert (plain / "m.csv").read_text() == (cached / "m.csv").read_text()
    assert report.quarantined.get("corrupt", 0) >= 1
    records = read_split_manifest(cached / "m.csv")
    with h5py.File(cached / "pixels.h5") as f:
        digests = f["sha256"].asstr()[:]
        assert int(f.attrs["image_size"]) == size and sum(map(bool, digests)) == report.accepted + 1  # + the dup
        row = {d: i for i, d in enumerate(digests) if d}
        for rec in records[:: max(1, len(records) // 12)]:
            np.testing.assert_array_equal(f["images"][row[rec.sha256]],
                                          image_to_array(storage.read_bytes(rec.uri), size))
    cfg = PreprocessConfig(image_size=size, workers=1)
    a = build_hdf5(cached / "m.csv", tmp_path / "a", cfg, progress=False)
    with monkeypatch.context() as m:  # from the cache, nothing is decoded again
        m.setattr("clazzify.training.preprocess.image_to_array", lambda *a: pytest.fail("decoded again"))
        b = build_hdf5(cached / "m.csv", tmp_path / "b", cfg, progress=False, pixel_cache=cached / "pixels.h5")
    # A cache of another size is ignored (everything decoded), not misused.
    c = build_hdf5(cached / "m.csv", tmp_path / "c", PreprocessConfig(image_size=48, workers=1), progress=False,
                   pixel_cache=cached / "pixels.h5")
    d = build_hdf5(cached / "m.csv", tmp_path / "d", PreprocessConfig(image_size=48, workers=1), progress=False)
    for split in a:
        with h5py.File(a[split]) as fa, h5py.File(b[split]) as fb:
            np.testing.assert_array_equal(fa["images"][:], fb["images"][:])
            np.testing.assert_array_equal(fa["labels"][:], fb["labels"][:])
            assert fa.attrs["fingerprint"] == fb.attrs["fingerprint"]
        with h5py.File(c[split]) as fc, h5py.File(d[split]) as fd:
            np.testing.assert_array_equal(fc["images"][:], fd["images"][:])


def test_pixel_cache_rejects_a_bad_size(demo_dir, tmp_path):
    with pytest.raises(ConfigError, match="pixel_size must be within"):
        ingest_images(str(demo_dir), tmp_path / "m.csv", tmp_path, IngestConfig(seed=3), progress=False,
                      pixel_cache=tmp_path / "pixels.h5", pixel_size=8)
