"""GuestBuffers: READ reply pages kept as guest addresses, filled by one raw preadv."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vhostfs.virtio.buffers import ChainWriter
from vhostfs.virtio.guestbufs import GuestBuffers, preadv_into
from vhostfs.virtio.memory import GuestMemory

DATA = bytes((i * 7 + 3) % 251 for i in range(64 << 10))
# Scattered, out-of-order ranges of odd sizes, as a guest's pages can be.
RANGES = [(0x9000, 4096), (0x2000, 100), (0x5003, 3000), (0x40000, 8192), (0x3000, 1)]


def buffers(memory: GuestMemory, ranges: list[tuple[int, int]]) -> GuestBuffers:
    memory.view(0, 1)  # make the region the hot one
    mapped = memory.hot_mapping()
    assert mapped is not None
    gpas = [g for g, _ in ranges]
    lens = [n for _, n in ranges]
    return GuestBuffers(mapped.view[:], mapped.gpa, mapped.host, gpas, lens)


@pytest.fixture
def data_fd(tmp_path: Path) -> int:
    path = tmp_path / "data"
    path.write_bytes(DATA)
    return os.open(path, os.O_RDONLY)


def test_preadv_fills_exactly_the_ranges_in_order(memory: GuestMemory, data_fd: int) -> None:
    everything = memory.view(0, 1 << 20)
    everything[:] = b"\xee" * len(everything)
    bufs = buffers(memory, RANGES)
    assert preadv_into(data_fd, bufs, 5) == sum(n for _, n in RANGES)
    expected = bytearray(b"\xee" * len(everything))
    pos = 5
    for gpa, n in RANGES:
        expected[gpa : gpa + n] = DATA[pos : pos + n]
        pos += n
    assert bytes(everything) == bytes(expected)  # nothing outside the ranges was touched


def test_preadv_stops_short_at_end_of_file(memory: GuestMemory, data_fd: int) -> None:
    bufs = buffers(memory, RANGES)
    offset = len(DATA) - 5000
    assert bufs.preadv(data_fd, offset) == 5000
    assert bytes(bufs[0]) + bytes(bufs[1]) + bytes(bufs[2])[:804] == DATA[offset:]
    assert bufs.preadv(data_fd, len(DATA)) == 0


def test_views_slices_and_spans_match_the_ranges(memory: GuestMemory) -> None:
    memory.view(0, 1 << 20)[:] = bytes(range(256)) * 4096
    bufs = buffers(memory, RANGES)
    whole = memory.view(0, 1 << 20)
    assert [bytes(v) for v in bufs] == [bytes(whole[g : g + n]) for g, n in RANGES]
    assert bytes(bufs[2]) == bytes(whole[0x5003 : 0x5003 + 3000])
    assert bufs[1:3].lens == [100, 3000] and bufs.nbytes == sum(n for _, n in RANGES)
    span = bufs.span(4000, 200)  # the last 96 bytes of the first range, 100, 4 of the third
    assert list(zip(span.gpas, span.lens, strict=True)) == [
        (0x9000 + 4000, 96),
        (0x2000, 100),
        (0x5003, 4),
    ]


def test_the_mapping_outlives_the_memory_table(memory: GuestMemory, data_fd: int) -> None:
    """A chain in flight when the frontend removes its region still writes mapped memory."""
    bufs = buffers(memory, RANGES)
    memory.clear()
    assert bufs.preadv(data_fd, 0) == sum(n for _, n in RANGES)
    assert bytes(bufs[0]) == DATA[:4096]


def test_chain_writer_hands_on_guest_buffers_without_views(memory: GuestMemory) -> None:
    bufs = buffers(memory, [(0x1000, 16), *RANGES])
    writer = ChainWriter(bufs)
    assert writer.capacity == 16 + sum(n for _, n in RANGES)
    rest = writer.views(16, writer.capacity - 16)
    assert isinstance(rest, GuestBuffers) and rest.gpas == [g for g, _ in RANGES]
    part = writer.views(20, 10)
    assert isinstance(part, GuestBuffers) and list(part.gpas) == [0x9004]
    writer.write_at(0, b"H" * 20)  # the header plus 4 bytes of the first page
    assert bytes(memory.view(0x1000, 16)) == b"H" * 16
    assert bytes(memory.view(0x9000, 4)) == b"HHHH"
