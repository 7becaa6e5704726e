"""Split ring, device side: chain walks, bad chains, used ring and notification decisions."""

from __future__ import annotations

import os
import struct

import pytest

from tests.unit.virtio.conftest import MEM
from vhostfs.errors import ChainError, GuestMemoryError
from vhostfs.vhost_user.messages import MemRegion
from vhostfs.virtio.chain import DESCRIPTOR, F_INDIRECT, F_NEXT, F_WRITE, MAX_INDIRECT
from vhostfs.virtio.guestbufs import GuestBuffers
from vhostfs.virtio.memory import GuestMemory
from vhostfs.virtio.ring import SplitQueue

NUM = 8
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000
DATA = 0x10000


def put_desc(
    memory: GuestMemory, table: int, i: int, addr: int, length: int, flags: int, nxt: int
) -> None:
    DESCRIPTOR.pack_into(memory.view(table + 16 * i, 16), 0, addr, length, flags, nxt)


def write_table(memory: GuestMemory, entries: list[tuple[int, int, int]]) -> None:
    """An indirect table at 0x4000 in Linux's layout: entry i links to i + 1."""
    for i, (addr, length, flags) in enumerate(entries):
        more = F_NEXT if i < len(entries) - 1 else 0
        put_desc(memory, 0x4000, i, addr, length, flags | more, i + 1)


def publish(memory: GuestMemory, heads: list[int], start: int = 0) -> None:
    avail = memory.view(AVAIL, 6 + 2 * NUM)
    for k, head in enumerate(heads):
        struct.pack_into("<H", avail, 4 + 2 * ((start + k) % NUM), head)
    struct.pack_into("<H", avail, 2, (start + len(heads)) & 0xFFFF)


def queue(memory: GuestMemory, event_idx: bool = False) -> SplitQueue:
    return SplitQueue(
        memory,
        NUM,
        memory.view(DESC, 16 * NUM),
        memory.view(AVAIL, 6 + 2 * NUM),
        memory.view(USED, 6 + 8 * NUM),
        0,
        event_idx,
    )


def test_direct_chain_splits_readable_and_writable(memory: GuestMemory) -> None:
    memory.view(DATA, 5)[:] = b"hello"
    put_desc(memory, DESC, 0, DATA, 5, F_NEXT, 1)
    put_desc(memory, DESC, 1, DATA + 100, 16, F_WRITE, 0)
    publish(memory, [0])
    q = queue(memory)
    chain = q.pop()
    assert chain is not None and chain.error is None
    assert [bytes(v) for v in chain.readable] == [b"hello"]
    assert [len(v) for v in chain.writable] == [16]
    assert q.pop() is None
    q.push(chain, 16)
    used = memory.view(USED, 6 + 8 * NUM)
    assert struct.unpack_from("<HHII", used) == (0, 1, 0, 16)


def test_indirect_table_is_walked(memory: GuestMemory) -> None:
    table = 0x4000
    put_desc(memory, table, 0, DATA, 40, F_NEXT, 1)
    put_desc(memory, table, 1, DATA + 64, 4096, F_WRITE, 0)
    put_desc(memory, DESC, 3, table, 32, F_INDIRECT, 0)
    publish(memory, [3])
    chain = queue(memory).pop()
    assert chain is not None and chain.error is None and chain.head == 3
    assert [len(v) for v in chain.readable] == [40]
    assert [len(v) for v in chain.writable] == [4096]


@pytest.mark.parametrize(
    ("descs", "message"),
    [
        ([(0, DATA, 8, F_NEXT, 0)], "loop"),  # next points back at itself
        ([(0, DATA, 8, F_NEXT, 9)], "outside"),  # next beyond the ring
        ([(0, MEM - 4, 8, 0, 0)], "not in guest memory"),  # buffer runs off the end
        ([(0, DATA, 8, F_WRITE | F_NEXT, 1), (1, DATA, 8, 0, 0)], "readable"),
        ([(0, 0x4000, 20, F_INDIRECT, 0)], "whole descriptors"),
        ([(0, 0x4000, 16 * (MAX_INDIRECT + 1), F_INDIRECT, 0)], "indirect table of"),
        ([(0, 0x4000, 16, F_INDIRECT | F_NEXT, 1)], "alone"),
    ],
)
def test_malformed_chain_comes_back_with_an_error(
    memory: GuestMemory, descs: list[tuple[int, int, int, int, int]], message: str
) -> None:
    for i, addr, length, flags, nxt in descs:
        put_desc(memory, DESC, i, addr, length, flags, nxt)
    publish(memory, [0])
    q = queue(memory)
    chain = q.pop()
    assert chain is not None and chain.error is not None
    assert message in chain.error
    assert chain.readable == [] and chain.writable == []
    q.push(chain, 0)  # still returned to the driver, so it does not leak the descriptors
    assert struct.unpack_from("<H", memory.view(USED, 4), 2)[0] == 1


def test_indirect_inside_indirect_is_refused(memory: GuestMemory) -> None:
    put_desc(memory, 0x4000, 0, 0x5000, 16, F_INDIRECT, 0)
    put_desc(memory, DESC, 0, 0x4000, 16, F_INDIRECT, 0)
    publish(memory, [0])
    chain = queue(memory).pop()
    assert chain is not None and chain.error is not None and "inside" in chain.error


def test_indirect_loop_is_bounded(memory: GuestMemory) -> None:
    put_desc(memory, 0x4000, 0, DATA, 8, F_NEXT, 1)
    put_desc(memory, 0x4000, 1, DATA, 8, F_NEXT, 0)
    put_desc(memory, DESC, 0, 0x4000, 32, F_INDIRECT, 0)
    publish(memory, [0])
    chain = queue(memory).pop()
    assert chain is not None and chain.error is not None and "loop" in chain.error


def test_driver_claiming_more_than_the_ring_is_an_error(memory: GuestMemory) -> None:
    struct.pack_into("<H", memory.view(AVAIL, 4), 2, NUM + 1)
    with pytest.raises(ChainError):
        queue(memory).pop()


def test_ring_areas_must_fit_guest_memory(memory: GuestMemory) -> None:
    with pytest.raises(GuestMemoryError):
        memory.uaddr_view(0x7000_0000 + MEM - 8, 16)


def test_event_idx_notifies_only_when_crossing_used_event(memory: GuestMemory) -> None:
    put_desc(memory, DESC, 0, DATA, 8, 0, 0)
    q = queue(memory, event_idx=True)
    avail = memory.view(AVAIL, 6 + 2 * NUM)
    struct.pack_into("<H", avail, 4 + 2 * NUM, 1)  # used_event: interrupt after used idx 2
    publish(memory, [0, 0, 0])
    results = []
    for _ in range(3):
        chain = q.pop()
        assert chain is not None
        q.push(chain, 0)
        results.append(q.should_notify())
    assert results == [False, True, False]


def test_enable_kicks_reports_entries_that_raced_in(memory: GuestMemory) -> None:
    q = queue(memory, event_idx=True)
    assert q.enable_kicks() is False
    avail_event = struct.unpack_from("<H", memory.view(USED + 4 + 8 * NUM, 2))[0]
    assert avail_event == 0
    put_desc(memory, DESC, 0, DATA, 8, 0, 0)
    publish(memory, [0])
    assert q.enable_kicks() is True


@pytest.mark.parametrize("writes", [0, 1, 3, 200])
def test_sequential_and_linked_tables_give_the_same_buffers(
    memory: GuestMemory, writes: int
) -> None:
    """The column-wise fast path (Linux's layout) and the general walk agree exactly."""
    reads = [(DATA + 0x1000 * i, 100 + i) for i in range(3)]
    pages = [(DATA + 0x10000 + 0x200 * i, 64 + i % 7) for i in range(writes)]
    entries = [(a, n, 0) for a, n in reads] + [(a, n, F_WRITE) for a, n in pages]
    count = len(entries)
    # Linux's layout: entry i links to i + 1.
    for i, (addr, length, flags) in enumerate(entries):
        more = F_NEXT if i < count - 1 else 0
        put_desc(memory, 0x4000, i, addr, length, flags | more, i + 1)

    # The same chain with entries 1.. stored backwards, linked through `next` (a walk always
    # starts at entry 0): only the general walk fits it.
    def slot(i: int) -> int:
        return 0 if i == 0 else count - i

    for i, (addr, length, flags) in enumerate(entries):
        more = F_NEXT if i < count - 1 else 0
        put_desc(memory, 0x8000, slot(i), addr, length, flags | more, slot(i + 1) if more else 0)
    put_desc(memory, DESC, 0, 0x4000, 16 * count, F_INDIRECT, 0)
    put_desc(memory, DESC, 2, 0x8000, 16 * count, F_INDIRECT, 0)
    publish(memory, [0, 2])
    q = queue(memory)
    fast, linked = q.pop(), q.pop()
    assert fast is not None and linked is not None
    assert fast.error is None and linked.error is None
    for chain in (fast, linked):
        assert [len(v) for v in chain.readable] == [n for _, n in reads]
        assert [len(v) for v in chain.writable] == [n for _, n in pages]
    memory.view(DATA + 0x10000, 0x200 * 200)[:] = bytes(range(256)) * (0x200 * 200 // 256)
    assert [bytes(v) for v in fast.writable] == [bytes(v) for v in linked.writable]
    # A long READ reply's pages stay addresses (no view each) on the fast path only.
    assert isinstance(fast.writable, GuestBuffers) == (writes == 200)
    assert isinstance(linked.writable, list)


def test_a_table_sent_again_is_not_decoded_again_until_the_memory_table_changes(
    memory: GuestMemory,
) -> None:
    """Guests reuse I/O buffers: the same long table decodes once per memory table, and the
    guest rewriting it in place (other buffers, same table address) is never missed."""
    pages = [(DATA + 0x2000 * i, 4096) for i in range(40)]
    entries = [(DATA - 0x1000, 40, 0)] + [(a, n, F_WRITE) for a, n in pages]

    q = _one_table_in_three_slots(memory, entries)
    first, second = q.pop(), q.pop()
    assert first is not None and second is not None
    assert second.writable is first.writable  # decoded once, shared (never mutated)
    assert len(memory.translations) == 1

    moved = [(a + 0x100, n, f) for a, n, f in entries]  # same table address, new buffers
    write_table(memory, moved)
    publish(memory, [2], start=2)
    third = q.pop()
    assert third is not None and isinstance(third.writable, GuestBuffers)
    assert list(third.writable.gpas) == [a + 0x100 for a, _ in pages]

    region, fd = _spare_region()
    memory.add_region(region, fd)
    os.close(fd)
    assert memory.translations == {}


def _one_table_in_three_slots(
    memory: GuestMemory, entries: list[tuple[int, int, int]]
) -> SplitQueue:
    """The indirect table `entries` behind ring slots 0-2; slots 0 and 1 made available."""
    write_table(memory, entries)
    for slot in range(3):
        put_desc(memory, DESC, slot, 0x4000, 16 * len(entries), F_INDIRECT, 0)
    publish(memory, [0, 1])
    return queue(memory)


def _spare_region() -> tuple[MemRegion, int]:
    fd = os.memfd_create("spare")
    os.ftruncate(fd, 0x1000)
    return MemRegion(1 << 30, 0x1000, 0x9000_0000, 0), fd


def test_a_short_table_sent_again_reuses_its_walk_and_never_a_stale_one(
    memory: GuestMemory,
) -> None:
    """Every request's table (header, arguments, reply) is remembered like the long ones;
    a table rewritten in place is decoded anew, never served from the old walk."""
    entries = [(DATA, 40, 0), (DATA + 40, 16, 0), (DATA + 0x1000, 16, F_WRITE),
               (DATA + 0x2000, 4096, F_WRITE)]  # fmt: skip

    q = _one_table_in_three_slots(memory, entries)
    first, second = q.pop(), q.pop()
    assert first is not None and second is not None and first.error is None
    # The header and arguments are contiguous: one view. Reused, in lists of their own.
    assert [len(v) for v in first.readable] == [56]
    assert [len(v) for v in first.writable] == [16, 4096]
    assert second.readable[0] is first.readable[0] and second.readable is not first.readable
    assert len(memory.translations) == 1

    write_table(memory, [(DATA + 0x100, 56, 0), (DATA + 0x3000, 4096, F_WRITE)])  # in place
    put_desc(memory, DESC, 2, 0x4000, 32, F_INDIRECT, 0)
    publish(memory, [2], start=2)
    third = q.pop()
    assert third is not None and third.error is None
    assert [len(v) for v in third.readable] == [56] and [len(v) for v in third.writable] == [4096]
    memory.view(DATA + 0x100, 56)[:] = b"\x07" * 56
    assert bytes(third.readable[0]) == b"\x07" * 56  # a view of the new buffer, not the old

    region, fd = _spare_region()
    memory.add_region(region, fd)
    os.close(fd)
    assert memory.translations == {}
