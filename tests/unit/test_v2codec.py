"""The one V2 binary BYTES codec, shared by the model server and the scoring client."""

from __future__ import annotations

import struct

import pytest

from clazzify.core.v2codec import BytesTensorError, pack_bytes_tensor, unpack_bytes_tensor

pytestmark = pytest.mark.unit


def test_pack_then_unpack_gives_back_every_element():
    items = [b"", b"xy", bytes(range(256)) * 3]
    raw = pack_bytes_tensor(items)
    assert raw[:4] == struct.pack("<I", 0)
    assert unpack_bytes_tensor(raw) == items
    assert unpack_bytes_tensor(b"") == []


def test_unpack_catches_lengths_past_the_end():
    with pytest.raises(BytesTensorError, match="t: element of 9 bytes at byte 4 runs past"):
        unpack_bytes_tensor(struct.pack("<I", 9) + b"abc", "t")
    with pytest.raises(BytesTensorError, match="truncated element length at byte 6"):
        unpack_bytes_tensor(pack_bytes_tensor([b"ab"]) + b"\x01", "t")
