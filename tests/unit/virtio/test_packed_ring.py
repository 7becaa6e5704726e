"""Packed ring, device side: availability by wrap counters, chains, used elements, base word."""

from __future__ import annotations

import struct

from tests.unit.virtio.conftest import MEM
from vhostfs.virtio.chain import DESCRIPTOR, F_INDIRECT, F_NEXT, F_WRITE
from vhostfs.virtio.memory import GuestMemory
from vhostfs.virtio.packed import EVENT_DESC, F_AVAIL, F_USED, PackedQueue

NUM = 4
RING, DRIVER_EVENT, DEVICE_EVENT = 0x1000, 0x2000, 0x2004
DATA = 0x10000


def avail_flags(wrap: int) -> int:
    return F_AVAIL if wrap else F_USED


def put(memory: GuestMemory, slot: int, addr: int, length: int, buf_id: int, flags: int) -> None:
    DESCRIPTOR.pack_into(memory.view(RING + 16 * slot, 16), 0, addr, length, buf_id, flags)


def queue(memory: GuestMemory, base: int = 0x8000_8000, event_idx: bool = False) -> PackedQueue:
    return PackedQueue(
        memory,
        NUM,
        memory.view(RING, 16 * NUM),
        memory.view(DRIVER_EVENT, 4),
        memory.view(DEVICE_EVENT, 4),
        base,
        event_idx,
    )


def test_chain_of_two_then_used_element(memory: GuestMemory) -> None:
    put(memory, 0, DATA, 40, 0, avail_flags(1) | F_NEXT)
    put(memory, 1, DATA + 64, 16, 7, avail_flags(1) | F_WRITE)
    q = queue(memory)
    chain = q.pop()
    assert chain is not None and chain.error is None
    assert chain.head == 7 and chain.ring_descs == 2
    assert q.pop() is None
    q.push(chain, 16)
    _, length, buf_id, flags = DESCRIPTOR.unpack_from(memory.view(RING, 16))
    assert (length, buf_id) == (16, 7)
    assert flags & F_AVAIL and flags & F_USED  # used wrap counter 1
    assert q.base() == 2 | (1 << 15) | (2 << 16) | (1 << 31)


def test_wrap_around_flips_counters(memory: GuestMemory) -> None:
    q = queue(memory, base=3 | (1 << 15) | (3 << 16) | (1 << 31))
    put(memory, 3, DATA, 8, 1, avail_flags(1) | F_NEXT)
    put(memory, 0, DATA, 8, 2, avail_flags(0))  # next lap: the driver flipped its counter
    chain = q.pop()
    assert chain is not None and chain.error is None and chain.ring_descs == 2
    q.push(chain, 0)
    assert q.base() == 1 | (0 << 15) | (1 << 16) | (0 << 31)


def test_indirect_table_runs_in_order(memory: GuestMemory) -> None:
    table = 0x4000
    DESCRIPTOR.pack_into(memory.view(table, 16), 0, DATA, 40, 0, 0)
    DESCRIPTOR.pack_into(memory.view(table + 16, 16), 0, DATA + 64, 64, 0, F_WRITE)
    put(memory, 0, table, 32, 5, avail_flags(1) | F_INDIRECT)
    chain = queue(memory).pop()
    assert chain is not None and chain.error is None and chain.head == 5
    assert [len(v) for v in chain.readable] == [40]
    assert [len(v) for v in chain.writable] == [64]


def test_chain_into_unavailable_slot_is_an_error(memory: GuestMemory) -> None:
    put(memory, 0, DATA, 8, 0, avail_flags(1) | F_NEXT)
    put(memory, 1, DATA, 8, 0, avail_flags(0))  # not made available in this lap
    q = queue(memory)
    chain = q.pop()
    assert chain is not None and chain.error is not None and "not available" in chain.error


def test_bad_address_in_chain_is_reported_and_skipped(memory: GuestMemory) -> None:
    put(memory, 0, MEM + 4096, 8, 3, avail_flags(1))
    put(memory, 1, DATA, 8, 4, avail_flags(1))
    q = queue(memory)
    bad = q.pop()
    assert bad is not None and bad.error is not None and bad.head == 3
    good = q.pop()
    assert good is not None and good.error is None and good.head == 4


def test_driver_event_suppression(memory: GuestMemory) -> None:
    put(memory, 0, DATA, 8, 0, avail_flags(1))
    put(memory, 1, DATA, 8, 1, avail_flags(1))
    q = queue(memory, event_idx=True)
    struct.pack_into("<HH", memory.view(DRIVER_EVENT, 4), 0, 1 | (1 << 15), EVENT_DESC)
    first, second = q.pop(), q.pop()
    assert first is not None and second is not None
    q.push(first, 0)
    assert q.should_notify() is False  # the driver asked for an event after slot 1
    q.push(second, 0)
    assert q.should_notify() is True
