"""The torch-free state-dict reader: round trip, and refusal of every other pickle global."""

import io
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from clazzify.core.errors import DataError
from clazzify.training.torch_weights import read_state_dict

pytestmark = pytest.mark.unit


@pytest.fixture
def fake_torch(monkeypatch):
    """Just enough of ``torch`` for :mod:`pickle` to write legacy-format globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    class LongStorage:
        pass

    def _rebuild_tensor_v2(*args):  # never called while writing
        raise AssertionError

    FloatStorage.__module__ = LongStorage.__module__ = "torch"
    FloatStorage.__qualname__, LongStorage.__qualname__ = "FloatStorage", "LongStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch.LongStorage, utils._rebuild_tensor_v2 = FloatStorage, LongStorage, _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Tensor:
    def __init__(self, torch, key, offset, size, stride, dtype=np.float32):
        self.torch, self.key, self.args = torch, key, (offset, size, stride)
        self.storage_type = torch.FloatStorage if dtype == np.float32 else torch.LongStorage

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                (_StorageRef(self.storage_type, self.key), *self.args, False, {}))


class _StorageRef:
    def __init__(self, kind, key):
        self.kind, self.key = kind, key


def write_legacy(path, torch, tensors: dict[str, tuple[np.ndarray, int, tuple, tuple]], state_obj=None):
    """Write ``{name: (storage, offset, size, stride)}`` in torch's legacy layout."""
    storages, entries = {}, {}
    for i, (name, (data, offset, size, stride)) in enumerate(tensors.items()):
        key = f"k{i}"
        storages[key] = data
        entries[name] = _Tensor(torch, key, offset, size, stride, data.dtype)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", obj.kind, obj.key, "cpu", storages[obj.key].size, None)
            return None

    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    from collections import OrderedDict

    P(buf, protocol=2).dump(state_obj if state_obj is not None else OrderedDict(entries))
    pickle.dump(list(storages), buf, protocol=2)
    for data in storages.values():
        buf.write(struct.pack("<q", data.size))
        buf.write(data.tobytes())
    path.write_bytes(buf.getvalue())


def test_round_trip_with_offsets_and_strides(tmp_path, fake_torch):
    base = np.arange(24, dtype=np.float32)
    path = tmp_path / "w.pth"
    write_legacy(path, fake_torch, {
        "conv.weight": (base, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
        "fc.weight": (np.arange(6, dtype=np.float32), 0, (3, 2), (1, 3)),  # a transposed view
        "bias": (np.arange(10, dtype=np.float32), 4, (3,), (1,)),
        "bn.num_batches_tracked": (np.array([7], dtype=np.int64), 0, (), ()),
    })
    sd = read_state_dict(path)
    np.testing.assert_array_equal(sd["conv.weight"], base.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(sd["fc.weight"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    np.testing.assert_array_equal(sd["bias"], [4, 5, 6])
    assert sd["bn.num_batches_tracked"] == 7


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_a_malicious_pickle_before_running_it(tmp_path, fake_torch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    write_legacy(path, fake_torch, {}, state_obj={"x": _Evil(marker)})
    with pytest.raises(DataError, match=r"refusing pickle global (posix|os)\.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_refuses_a_malicious_header(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(DataError, match="refusing pickle global"):
        read_state_dict(path)
    assert not marker.exists()


def test_rejects_other_files_with_a_clear_error(tmp_path):
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04 not a legacy file")
    with pytest.raises(DataError, match="zip.pth"):
        read_state_dict(tmp_path / "zip.pth")
    with pytest.raises(DataError, match="cannot open"):
        read_state_dict(tmp_path / "missing.pth")


def test_reads_the_packaged_lite0_weights():
    from clazzify.training.lite0 import packaged_weights_path

    sd = read_state_dict(packaged_weights_path())
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked")) == 4_694_024


@pytest.mark.parametrize(
    ("offset", "size", "stride", "words"),
    [
        (10, (4,), (1,), "past the end"),                    # offset beyond the 12 stored
        (0, (3, 4), (4, 2), "past the end"),                 # a stride that walks off the end
        (11, (2,), (1,), "past the end"),                    # one element too far
        (0, (2,), (-1,), "negative"),                        # reads before the buffer
        (-4, (2,), (1,), "negative"),
        (0, (100_000, 100_000), (0, 0), "repeating strides"),  # 10^10 elements from 12
        (0, (3,), (1, 1), "differ in length"),
        (13, (0,), (1,), "offset past the end"),
    ],
)
def test_refuses_a_tensor_view_outside_its_storage(tmp_path, fake_torch, offset, size, stride, words):
    """A crafted view is refused with a clear error before numpy reads a byte through it."""
    path = tmp_path / "hostile.pth"
    write_legacy(path, fake_torch, {"w": (np.arange(12, dtype=np.float32), offset, size, stride)})
    with pytest.raises(DataError, match=words) as caught:
        read_state_dict(path)
    assert f"size {size}" in str(caught.value) and "storage of 12 elements" in str(caught.value)


def test_a_view_that_ends_on_the_last_element_is_read(tmp_path, fake_torch):
    path = tmp_path / "edge.pth"
    write_legacy(path, fake_torch, {"w": (np.arange(12, dtype=np.float32), 2, (2, 5), (5, 1)),
                                    "empty": (np.arange(12, dtype=np.float32), 12, (0,), (1,))})
    sd = read_state_dict(path)
    np.testing.assert_array_equal(sd["w"], np.arange(2, 12, dtype=np.float32).reshape(2, 5))
    assert sd["empty"].shape == (0,)
