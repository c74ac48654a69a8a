"""The HDF5 batch loader: every row once per epoch, images aligned with their labels, mixed
batches from a class-ordered file, a new plan each epoch, under tf.data and PyDataset."""

import json

import h5py
import numpy as np
import pytest

from clazzify.training.data import HDF5Batches, make_dataset, pydataset

pytestmark = pytest.mark.unit


def write(path, labels, size=4):
    """Row i's pixels all hold i % 251, so a batch shows which rows it read."""
    n = len(labels)
    with h5py.File(path, "w") as f:
        images = np.broadcast_to((np.arange(n) % 251).astype(np.uint8)[:, None, None, None], (n, size, size, 3))
        f.create_dataset("images", data=images, chunks=(8, size, size, 3))
        f["labels"] = np.asarray(labels, dtype=np.int64)
        f.attrs.update(image_size=size, class_names=json.dumps(["a", "b", "c", "d"]))
    return path


@pytest.fixture
def class_ordered(tmp_path):
    """Two shards whose rows are sorted by class: the worst case for block reads."""
    return [write(tmp_path / "train-00000.h5", np.repeat(np.arange(4), 50)),
            write(tmp_path / "train-00001.h5", np.repeat(np.arange(4), 13))]


def test_every_row_once_and_images_match_labels(class_ordered):
    batches = HDF5Batches(class_ordered, 32, shuffle=True, seed=3, block_rows=8)
    assert len(batches) == -(-252 // 32)
    labels_by_file = [np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 13)]
    seen = []
    for i in range(len(batches)):
        images, labels = batches.read(7, i)
        seen.append(labels)
        assert images.shape[1:] == (4, 4, 3) and len(images) == len(labels)
    file_of, rows = batches.plan(7)
    assert sorted(zip(file_of.tolist(), rows.tolist(), strict=True)) == (
        [(0, r) for r in range(200)] + [(1, r) for r in range(52)])
    expected = [labels_by_file[f][r] for f, r in zip(file_of, rows, strict=True)]
    np.testing.assert_array_equal(np.concatenate(seen), expected)
    images, labels = batches.read(7, 0)
    f0, r0 = file_of[:32], rows[:32]
    np.testing.assert_array_equal(images[:, 0, 0, 0], r0 % 251)  # the pixels of the rows the labels name
    assert f0.tolist() and labels.tolist() == [labels_by_file[f][r] for f, r in zip(f0, r0, strict=True)]


def test_class_ordered_files_give_mixed_batches_and_each_epoch_a_new_plan(class_ordered):
    batches = HDF5Batches(class_ordered, 32, shuffle=True, seed=3, block_rows=8)
    classes = [len(np.unique(batches.read(1, i)[1])) for i in range(len(batches) - 1)]
    assert np.mean(classes) >= 3  # consecutive rows would give mostly one class a batch
    first, second = batches.plan(1), batches.plan(2)
    assert not np.array_equal(first[1], second[1])
    np.testing.assert_array_equal(batches.plan(1)[1], first[1])  # a key replays its epoch


def test_without_shuffle_rows_come_in_file_order(class_ordered):
    batches = HDF5Batches(class_ordered, 64, shuffle=False, block_rows=8)
    file_of, rows = batches.plan(0)
    assert file_of.tolist() == [0] * 200 + [1] * 52 and rows.tolist() == list(range(200)) + list(range(52))


def test_segments_read_only_their_rows(class_ordered):
    batches = HDF5Batches(class_ordered, 16, shuffle=True, block_rows=8, segments=[(0, 10, 30), (1, 0, 5)])
    file_of, rows = batches.plan(5)
    assert sorted(zip(file_of.tolist(), rows.tolist(), strict=True)) == (
        [(0, r) for r in range(10, 30)] + [(1, r) for r in range(5)])


def test_tf_data_and_pydataset_give_every_row_once_and_reshuffle(class_ordered):
    expected = np.sort(np.r_[np.repeat(np.arange(4), 50), np.repeat(np.arange(4), 13)])
    ds = make_dataset(class_ordered, 32, shuffle=True, seed=1)
    assert int(ds.cardinality()) == 8
    epochs = [np.concatenate([y.numpy() for _, y in ds]) for _ in range(2)]
    for labels in epochs:
        np.testing.assert_array_equal(np.sort(labels), expected)
    assert not np.array_equal(*epochs)

    loader = pydataset(class_ordered, 32, seed=1, workers=2, one_hot=4)
    assert len(loader) == 8
    first = np.concatenate([loader[i][1] for i in range(len(loader))])
    np.testing.assert_array_equal(np.sort(first.argmax(1)), expected)
    loader.on_epoch_end()
    second = np.concatenate([loader[i][1] for i in range(len(loader))])
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("layout", [{"chunks": (8, 4, 4, 3), "compression": "gzip"}, {"chunks": None}])
def test_compressed_and_contiguous_files_read_the_same_rows(tmp_path, layout):
    n = 40
    path = tmp_path / "train.h5"
    stamp = (np.arange(n) % 251).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.broadcast_to(stamp[:, None, None, None], (n, 4, 4, 3)), **layout)
        f["labels"] = np.arange(n) % 4
        f.attrs.update(image_size=4, class_names=json.dumps(["a", "b", "c", "d"]))
    batches = HDF5Batches([path], 16, shuffle=True, seed=2, block_rows=8)
    assert (batches._maps[0] is None) == ("compression" in layout)
    _, rows = batches.plan(1)
    images = np.concatenate([batches.read(1, i)[0] for i in range(len(batches))])
    np.testing.assert_array_equal(images[:, 0, 0, 0], stamp[rows])
