"""The Open Inference Protocol (KServe V2) binary BYTES tensor: one codec for both ends.

With KServe's binary tensor extension a ``BYTES`` tensor travels as its elements back to
back, each a 4-byte little-endian length followed by that many bytes. The model server
unpacks the images a client sent; the scoring client packs those images and unpacks the
server's text outputs (labels, class names). Both use this module, so a length that runs
past the end of the data is caught the same way on both sides.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from clazzify.core.errors import ClazzifyError

_LENGTH = struct.Struct("<I")


class BytesTensorError(ClazzifyError, ValueError):
    """A binary BYTES tensor whose element lengths do not add up to its size."""


def pack_bytes_tensor(items: Iterable[bytes]) -> bytes:
    """Frame ``items`` as one binary BYTES tensor (length prefix, then bytes, repeated)."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def unpack_bytes_tensor(raw: bytes, where: str = "BYTES tensor") -> list[bytes]:
    """Split a binary BYTES tensor into its elements.

    Args:
        raw: the tensor's bytes.
        where: names the tensor in the error message (e.g. ``inputs[0]``).

    Raises:
        BytesTensorError: a length prefix is cut off or an element runs past the end.
    """
    out, offset = [], 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + _LENGTH.size > len(raw):
            raise BytesTensorError(f"{where}: truncated element length at byte {offset}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if offset + length > len(raw):
            raise BytesTensorError(
                f"{where}: element of {length} bytes at byte {offset} runs past the "
                f"{len(raw)}-byte tensor"
            )
        out.append(bytes(view[offset : offset + length]))
        offset += length
    return out
