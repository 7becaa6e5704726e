"""ChainReader / ChainWriter: streams over guest buffers split wherever the driver chose."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhostfs.errors import ChainError
from vhostfs.virtio.buffers import ChainReader, ChainWriter


def split(data: bytes, cuts: list[int]) -> list[memoryview]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [memoryview(bytearray(data[a:b])) for a, b in itertools.pairwise(points)]


@given(st.binary(min_size=1, max_size=300), st.lists(st.integers(0, 300), max_size=6), st.data())
def test_reads_in_any_pieces_give_the_stream(
    data: bytes, cuts: list[int], draw: st.DataObject
) -> None:
    reader = ChainReader(split(data, cuts))
    out = b""
    while reader.remaining:
        size = draw.draw(st.integers(1, reader.remaining))
        how = draw.draw(st.sampled_from(["read", "views", "unpack"]))
        if how == "read":
            out += reader.read(size)
        elif how == "views":
            out += b"".join(bytes(v) for v in reader.views(size))
        else:  # decoded in place when inside one buffer, through a copy when split
            out += struct.Struct(f"{size}s").pack(*reader.unpack(struct.Struct(f"{size}s")))
    assert out == data
    with pytest.raises(ChainError):
        reader.unpack(struct.Struct("B"))


@given(st.integers(1, 300), st.lists(st.integers(0, 300), max_size=6), st.data())
def test_writes_at_any_offset_land_in_the_stream(
    size: int, cuts: list[int], draw: st.DataObject
) -> None:
    bufs = split(bytes(size), cuts)
    writer = ChainWriter(bufs)
    expected = bytearray(size)
    high = 0
    for _ in range(3):
        offset = draw.draw(st.integers(0, size - 1))
        data = draw.draw(st.binary(min_size=1, max_size=size - offset))
        writer.write_at(offset, data)
        expected[offset : offset + len(data)] = data
        high = max(high, offset + len(data))
    assert b"".join(bytes(b) for b in bufs) == bytes(expected)
    assert writer.written == high


def test_reading_past_the_readable_part_is_a_chain_error() -> None:
    reader = ChainReader([memoryview(bytearray(40)), memoryview(bytearray(8))])
    reader.read(44)
    with pytest.raises(ChainError):
        reader.read(5)
    assert reader.read(4) == bytes(4)


def test_writing_past_the_writable_part_is_a_chain_error() -> None:
    writer = ChainWriter([memoryview(bytearray(16)), memoryview(bytearray(8))])
    with pytest.raises(ChainError):
        writer.write_at(20, b"12345")
    with pytest.raises(ChainError):
        writer.views(0, 25)
    writer.write_at(12, b"abcdefgh")
    assert writer.written == 20


def test_views_cover_the_requested_range_without_copying() -> None:
    first, second = bytearray(16), bytearray(4096)
    writer = ChainWriter([memoryview(first), memoryview(second)])
    views = writer.views(16, 100)
    assert [len(v) for v in views] == [100]
    views[0][:3] = b"xyz"
    assert second[:3] == b"xyz"
