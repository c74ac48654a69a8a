"""Read a legacy-format PyTorch state dict into numpy arrays, without PyTorch.

PyTorch's legacy ``torch.save`` format (before 1.6's zip files) is a run of pickles:
a magic number, a protocol version, system info, the state dict (whose tensors point
at storages through ``persistent_id``), the list of storage keys, then each storage's
raw bytes (an int64 element count, then the elements). A pickle can call any global,
so this reader's unpickler resolves only the names a state dict needs, maps them to
numpy, and refuses every other global with :class:`~clazzify.core.errors.DataError`
before anything runs.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from clazzify.core.errors import DataError

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

#: torch storage class name -> numpy dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass
class _Storage:
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _LazyTensor:
    """A tensor whose storage bytes come after the pickle that describes it."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def check_bounds(self) -> None:
        """Refuse a view that would reach outside its storage.

        The offset, sizes and strides come from the file, and ``as_strided`` trusts them: an
        offset past the end or a stride too long would read process memory beyond the
        buffer, a negative one memory before it, and a zero stride over a huge size would
        allocate without bound. So every element the view can touch must lie inside the
        storage, and the view may not hold more elements than the storage does.

        Raises:
            DataError: naming the offset, size, stride and storage length.
        """
        numel = self.storage.numel
        what = (f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"on a storage of {numel} elements")
        if len(self.size) != len(self.stride):
            raise DataError(f"{what}: size and stride differ in length; malformed weights file")
        if self.offset < 0 or any(n < 0 for n in self.size) or any(s < 0 for s in self.stride):
            raise DataError(f"{what}: negative offset, size or stride; malformed weights file")
        elements = 1
        for n in self.size:
            elements *= n
        if elements == 0:
            if self.offset > numel:
                raise DataError(f"{what}: offset past the end of the storage; malformed weights file")
            return
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if last >= numel:
            raise DataError(f"{what}: reaches element {last}, past the end of the storage; "
                            "malformed or hostile weights file, not loaded")
        if elements > numel:
            raise DataError(f"{what}: {elements} elements from {numel} stored (repeating strides); "
                            "a state dict never needs that, so it was not loaded")

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise DataError("a tensor's storage was never read: truncated or malformed file")
        if len(data) != self.storage.numel:
            raise DataError(f"a storage holds {len(data)} elements, not the {self.storage.numel} "
                            "its tensors were described with: malformed weights file")
        self.check_bounds()
        if not self.size:
            return data[self.offset].copy()
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> _LazyTensor:
    if not isinstance(storage, _Storage):
        raise DataError(f"_rebuild_tensor_v2 got {type(storage).__name__}, not a storage")
    tensor = _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))
    tensor.check_bounds()  # before any bytes are read: refuse a hostile view at once
    return tensor


def _allowed(module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return _rebuild_tensor_v2
    if module == "torch" and name in STORAGE_DTYPES:
        return _StorageType(STORAGE_DTYPES[name])
    return None


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str):
        found = _allowed(module, name)
        if found is None:
            raise DataError(
                f"refusing pickle global {module}.{name}: a weights file may only rebuild tensors "
                "(torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict); "
                "this file is not a plain state dict, so it was not loaded"
            )
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise DataError(f"unsupported persistent id {pid!r:.80}: only tensor storages are allowed")
        _, kind, key, _location, numel = pid[:5]
        if len(pid) == 6 and pid[5] is not None:
            raise DataError(f"storage views (persistent id {pid!r:.80}) are not supported")
        if not isinstance(kind, _StorageType):
            raise DataError(f"persistent id names {kind!r:.80}, not a storage type")
        if key not in self.storages:
            self.storages[key] = _Storage(kind.dtype, int(numel))
        return self.storages[key]


def _restricted_load(f: BinaryIO):
    """A plain pickle (header records) through the same allow-list."""
    return _StateDictUnpickler(f, {}).load()


def read_state_dict(path: Path | str) -> dict[str, np.ndarray]:
    """The tensors of a legacy PyTorch state dict file, as numpy arrays by name.

    Raises:
        DataError: the file is missing, not a legacy state dict, truncated, or its pickle
            names any global other than tensor rebuilding.
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"cannot open weights file {path}: {e}") from e
    with f:
        try:
            magic = _restricted_load(f)
            if magic != _MAGIC:
                raise DataError(
                    f"{path} is not a legacy PyTorch state dict (magic number {magic!r:.40}); "
                    "zip-format files are not supported"
                )
            protocol = _restricted_load(f)
            if protocol != _PROTOCOL:
                raise DataError(f"{path}: unsupported PyTorch serialisation protocol {protocol!r:.40}")
            info = _restricted_load(f)
            if isinstance(info, dict) and not info.get("little_endian", True):
                raise DataError(f"{path} was written big-endian; only little-endian files are supported")
            storages: dict[str, _Storage] = {}
            state = _StateDictUnpickler(f, storages).load()
            keys = _restricted_load(f)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{path} is not a readable PyTorch state dict: {e}") from e
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise DataError(f"{path} does not hold a state dict (got {type(state).__name__})")
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise DataError(f"{path}: storage {key!r} is listed but no tensor uses it")
            head = f.read(8)
            if len(head) != 8:
                raise DataError(f"{path} is truncated (storage {key!r})")
            (numel,) = struct.unpack("<q", head)
            raw = f.read(numel * storage.dtype.itemsize)
            if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
                raise DataError(f"{path} is truncated or malformed (storage {key!r}: {numel} elements)")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    out = {}
    for name, value in state.items():
        if not isinstance(value, _LazyTensor):
            raise DataError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        out[str(name)] = value.materialise()
    return out
