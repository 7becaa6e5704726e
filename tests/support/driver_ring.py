"""Driver side of a split virtqueue, written independently of the device code under test.

Virtio 1.2, section 2.7. The driver owns the descriptor table and the avail ring and reads the
used ring; the device (the backend under test) does the opposite. This module is the other
half of `vhostfs/virtio/ring.py` and deliberately shares nothing with it but the descriptor
layout and flag constants, so that a misreading of the spec on one side shows up as a failure
instead of cancelling out.

Theory of operation:

* `add()` places one chain (direct descriptors linked by NEXT, or one INDIRECT descriptor
  pointing at a table in guest memory), puts its head in the avail ring and stores the new
  `avail.idx` (after the ring entry: x86 keeps stores in order).
* `kick_needed()` decides whether the backend must be notified for everything added since
  the last call: with EVENT_IDX when `avail.idx` crossed the device's `avail_event`, without
  it unless the device set NO_NOTIFY in `used.flags`.
* `poll_used()` consumes new used elements, frees their descriptors and returns
  `(head, length)` pairs. Heads are validated: the device may only return chains in flight.
* `arm_interrupt()` asks for an interrupt at the next used element (EVENT_IDX: `used_event`),
  then re-checks the used ring, closing the race with a completion that landed in between.

`post_raw()` writes hand-made descriptors (loops, bad addresses, ...) for bad-input tests.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from tests.support.guest_memory import DriverMemory
from vhostfs.virtio.chain import DESCRIPTOR, F_INDIRECT, F_NEXT, F_WRITE

USED_F_NO_NOTIFY: Final = 1  # used.flags

TABLE_NONE: Final = 0  # ChainSpec.table_kind: table memory not written yet
TABLE_SPLIT: Final = 1
TABLE_PACKED: Final = 2

_FENCE = threading.Lock()


def full_barrier() -> None:
    """Store->load fence for the EVENT_IDX checks (virtio 1.2, 2.7.7 / 2.7.10).

    CPython has no fence primitive; acquiring an uncontended lock executes a locked
    read-modify-write, which on x86-64 orders earlier stores before later loads.
    """
    _FENCE.acquire()
    _FENCE.release()


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event: did the index move from `old` to `new` past `event`? (u16 maths)"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


class DeviceMisbehaved(AssertionError):
    """The backend broke the ring protocol (returned a chain that is not in flight, ...)."""


class RingFull(RuntimeError):
    """Not enough free descriptors for the chain; collect completions first."""


@dataclass(slots=True)
class ChainSpec:
    """The buffers of one request in order: device-readable segments first, then writable.

    `table_gpa` is guest memory for an indirect table of 16 bytes per segment (0: always sent
    as direct descriptors). A ring writes the table once and remembers it in `table_kind`, so
    a prepared request can be resubmitted without rewriting it.
    """

    segments: list[tuple[int, int, bool]]  # (gpa, length, device-writable)
    table_gpa: int = 0
    table_kind: int = TABLE_NONE


@dataclass(frozen=True, slots=True)
class RawDesc:
    """A hand-made descriptor; `next` is the next index (split) or the buffer id (packed)."""

    addr: int
    length: int
    flags: int
    next: int = 0


def write_table(mem: DriverMemory, gpa: int, descs: Sequence[RawDesc], packed: bool) -> None:
    """Write an arbitrary descriptor table (for indirect tables made by hand)."""
    for i, d in enumerate(descs):
        if packed:
            DESCRIPTOR.pack_into(mem.buf, gpa + 16 * i, d.addr, d.length, d.next, d.flags)
        else:
            DESCRIPTOR.pack_into(mem.buf, gpa + 16 * i, d.addr, d.length, d.flags, d.next)


@dataclass(slots=True)
class SplitDriverRing:
    """The driver half of one split virtqueue living in `mem` (see the module docstring)."""

    mem: DriverMemory
    num: int
    event_idx: bool
    indirect: bool
    desc: int = 0  # gpa of the descriptor table
    avail: int = 0  # gpa of the avail ring
    used: int = 0  # gpa of the used ring
    avail_idx: int = 0  # next avail index to publish (free-running u16)
    last_used: int = 0  # next used index to consume
    _kicked_idx: int = 0  # avail_idx at the previous kick_needed()
    _free: list[int] = field(default_factory=list)  # free descriptor indexes (a stack)
    _chains: list[list[int] | None] = field(default_factory=list)  # head -> its descriptors

    def __post_init__(self) -> None:
        if self.num <= 0 or self.num > 32768 or self.num & (self.num - 1):
            raise ValueError(f"split ring size {self.num} is not a power of two <= 32768")
        # Three separate allocations: a backend must translate each address on its own.
        self.desc = self.mem.alloc(16 * self.num, 4096)
        self.avail = self.mem.alloc(6 + 2 * self.num, 64)
        self.used = self.mem.alloc(6 + 8 * self.num, 64)
        self._free = list(range(self.num - 1, -1, -1))
        self._chains = [None] * self.num

    @property
    def addresses(self) -> tuple[int, int, int]:
        """(desc, avail, used) guest addresses, the three areas SET_VRING_ADDR names."""
        return self.desc, self.avail, self.used

    def vring_base(self) -> int:
        """SET_VRING_BASE value: the next avail index the device should read."""
        return self.avail_idx

    @property
    def free_descriptors(self) -> int:
        return len(self._free)

    def in_flight(self) -> int:
        return sum(1 for c in self._chains if c is not None)

    def release(self) -> None:
        """Give the ring memory back (after the device stopped using it)."""
        self.mem.free(self.desc, 16 * self.num, 4096)
        self.mem.free(self.avail, 6 + 2 * self.num, 64)
        self.mem.free(self.used, 6 + 8 * self.num, 64)

    def descriptors_needed(self, chain: ChainSpec) -> int:
        """Ring descriptors `add(chain)` would take (compare with `free_descriptors`)."""
        if self.indirect and chain.table_gpa and len(chain.segments) > 1:
            return 1
        return len(chain.segments)

    def add(self, chain: ChainSpec) -> int:
        """Place `chain` and publish it; returns its head (the id the used ring returns)."""
        segs = chain.segments
        buf = self.mem.buf
        if self.indirect and chain.table_gpa and len(segs) > 1:
            if chain.table_kind != TABLE_SPLIT:
                last = len(segs) - 1
                for i, (addr, length, w) in enumerate(segs):
                    flags = (F_WRITE if w else 0) | (F_NEXT if i < last else 0)
                    DESCRIPTOR.pack_into(buf, chain.table_gpa + 16 * i, addr, length, flags, i + 1)
                chain.table_kind = TABLE_SPLIT
            if not self._free:
                raise RingFull("no free descriptor")
            head = self._free.pop()
            DESCRIPTOR.pack_into(
                buf, self.desc + 16 * head, chain.table_gpa, 16 * len(segs), F_INDIRECT, 0
            )
            self._chains[head] = [head]
        else:
            if len(segs) > len(self._free):
                raise RingFull(f"chain of {len(segs)} > {len(self._free)} free descriptors")
            free = self._free
            idxs = [free.pop() for _ in segs]
            last = len(segs) - 1
            for i, (addr, length, w) in enumerate(segs):
                flags = (F_WRITE if w else 0) | (F_NEXT if i < last else 0)
                nxt = idxs[i + 1] if i < last else 0
                DESCRIPTOR.pack_into(buf, self.desc + 16 * idxs[i], addr, length, flags, nxt)
            head = idxs[0]
            self._chains[head] = idxs
        self._publish(head)
        return head

    def post_raw(self, descs: Mapping[int, RawDesc], head: int) -> None:
        """Write hand-made descriptors at the given table indexes and publish `head`.

        The indexes must be free; they stay allocated until the device returns `head`.
        """
        for index in descs:
            if index not in self._free:
                raise ValueError(f"descriptor {index} is in use")
        for index, d in descs.items():
            self._free.remove(index)
            DESCRIPTOR.pack_into(
                self.mem.buf, self.desc + 16 * index, d.addr, d.length, d.flags, d.next
            )
        self._chains[head] = list(descs)
        self._publish(head)

    def _publish(self, head: int) -> None:
        u16 = self.mem.u16
        u16[(self.avail + 4) // 2 + self.avail_idx % self.num] = head
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        # The ring entry is stored before the index (x86 keeps stores in order).
        u16[(self.avail + 2) // 2] = self.avail_idx

    def kick_needed(self) -> bool:
        """Must the device be kicked for the chains published since the last call?"""
        old, new = self._kicked_idx, self.avail_idx
        self._kicked_idx = new
        if old == new:
            return False
        full_barrier()
        u16 = self.mem.u16
        if self.event_idx:
            return need_event(u16[(self.used + 4 + 8 * self.num) // 2], new, old)
        return not u16[self.used // 2] & USED_F_NO_NOTIFY

    def poll_used(self) -> list[tuple[int, int]]:
        """Consume new used elements: [(head, bytes written)], freeing their descriptors."""
        u32 = self.mem.u32
        idx = self.mem.u16[(self.used + 2) // 2]
        done: list[tuple[int, int]] = []
        while self.last_used != idx:
            slot = (self.used + 4) // 4 + 2 * (self.last_used % self.num)
            head, length = u32[slot], u32[slot + 1]
            descs = self._chains[head] if head < self.num else None
            if descs is None:
                raise DeviceMisbehaved(f"used ring returned head {head}, which is not in flight")
            self._chains[head] = None
            self._free.extend(descs)
            done.append((head, length))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return done

    def arm_interrupt(self) -> bool:
        """Ask for an interrupt at the next used element; True if one is already there."""
        u16 = self.mem.u16
        if self.event_idx:
            u16[(self.avail + 4) // 2 + self.num] = self.last_used
        else:
            u16[self.avail // 2] = 0
        full_barrier()
        return bool(u16[(self.used + 2) // 2] != self.last_used)
