"""Driver side of a packed virtqueue (virtio 1.2, section 2.8), independent of the device code.

One ring of `num` 16-byte descriptors {u64 addr, u32 len, u16 id, u16 flags} shared by both
sides, plus two 4-byte event suppression areas {u16 off_wrap, u16 flags}: the driver's (which
we write: when we want interrupts) and the device's (which we read: whether to kick).

The driver writes chains at `next_avail` in ring order, marking each descriptor available
with AVAIL = our avail wrap counter and USED = its inverse; the first descriptor's flags are
stored last so the device never sees half a chain. The device returns one descriptor per
buffer at its used position with the buffer id and AVAIL = USED = its used wrap counter; we
then advance our used position by the number of ring slots that buffer occupied (we remember
it per id, never trusting the device for it). Wrap counters start at 1 and flip at the end.

The vring base QEMU sends for a fresh packed ring is 0x80008000: avail index 0 with wrap 1 in
the low half, used index 0 with wrap 1 in the high half (reference 7.1).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from tests.support.driver_ring import (
    TABLE_PACKED,
    ChainSpec,
    DeviceMisbehaved,
    RawDesc,
    RingFull,
    full_barrier,
    need_event,
)
from tests.support.guest_memory import DriverMemory
from vhostfs.virtio.chain import DESCRIPTOR, F_INDIRECT, F_NEXT, F_WRITE
from vhostfs.virtio.packed import EVENT_DESC, EVENT_DISABLE, EVENT_ENABLE, F_AVAIL, F_USED

USED_PART: Final = struct.Struct("<IH")  # len, id at byte 8 of a used descriptor
HEAD_PART: Final = struct.Struct("<QIH")  # a descriptor without its flags


@dataclass(slots=True)
class PackedDriverRing:
    """The driver half of one packed virtqueue living in `mem`."""

    mem: DriverMemory
    num: int
    event_idx: bool
    indirect: bool
    ring: int = 0  # gpa of the descriptor ring (SET_VRING_ADDR desc)
    driver_event: int = 0  # gpa of our event suppression area (SET_VRING_ADDR avail)
    device_event: int = 0  # gpa of the device's area (SET_VRING_ADDR used)
    next_avail: int = 0  # slot of the next descriptor we write
    avail_wrap: int = 1
    next_used: int = 0  # slot where the next used descriptor appears
    used_wrap: int = 1
    num_free: int = 0  # ring slots not occupied by chains in flight
    _added: int = 0  # slots written since the last kick_needed()
    _free_ids: list[int] = field(default_factory=list)
    _slots: list[int] = field(default_factory=list)  # buffer id -> slots it occupies (0: free)

    def __post_init__(self) -> None:
        if self.num <= 0 or self.num > 32768:
            raise ValueError(f"packed ring size {self.num} out of range")
        self.ring = self.mem.alloc(16 * self.num, 4096)
        self.driver_event = self.mem.alloc(4, 64)
        self.device_event = self.mem.alloc(4, 64)
        self.num_free = self.num
        self._free_ids = list(range(self.num - 1, -1, -1))
        self._slots = [0] * self.num

    @property
    def addresses(self) -> tuple[int, int, int]:
        """(desc, avail, used) for SET_VRING_ADDR: ring, driver area, device area."""
        return self.ring, self.driver_event, self.device_event

    def vring_base(self) -> int:
        """QEMU's u32 encoding: avail index + wrap (bit 15), used index + wrap (bit 31)."""
        low = self.next_avail | self.avail_wrap << 15
        return low | (self.next_used | self.used_wrap << 15) << 16

    @property
    def free_descriptors(self) -> int:
        return self.num_free

    def in_flight(self) -> int:
        return sum(1 for s in self._slots if s)

    def release(self) -> None:
        self.mem.free(self.ring, 16 * self.num, 4096)
        self.mem.free(self.driver_event, 4, 64)
        self.mem.free(self.device_event, 4, 64)

    def _avail_bits(self) -> int:
        return F_AVAIL if self.avail_wrap else F_USED

    def _write(self, descs: Sequence[tuple[int, int, int]], buffer_id: int, raw: bool) -> None:
        """Write (addr, len, flags) at consecutive slots, first slot's flags last."""
        buf = self.mem.buf
        first_slot, first_flags = self.next_avail, 0
        for i, (addr, length, flags) in enumerate(descs):
            if not raw:
                flags |= self._avail_bits()
            slot = self.ring + 16 * self.next_avail
            if i == 0:
                first_flags = flags
                # Leave the old flags (a previous lap's, never "available" for this lap)
                # in place until the whole chain is written.
                HEAD_PART.pack_into(buf, slot, addr, length, buffer_id)
            else:
                DESCRIPTOR.pack_into(buf, slot, addr, length, buffer_id, flags)
            self.next_avail += 1
            if self.next_avail == self.num:
                self.next_avail = 0
                self.avail_wrap ^= 1
        # One 16-bit store publishes the chain (see DriverMemory.u16 on why not pack_into).
        self.mem.u16[(self.ring + 16 * first_slot + 14) // 2] = first_flags
        self._added += len(descs)

    def descriptors_needed(self, chain: ChainSpec) -> int:
        """Ring slots `add(chain)` would take (compare with `free_descriptors`)."""
        if self.indirect and chain.table_gpa and len(chain.segments) > 1:
            return 1
        return len(chain.segments)

    def add(self, chain: ChainSpec) -> int:
        """Place `chain`; returns its buffer id (what the device returns on completion)."""
        segs = chain.segments
        if self.indirect and chain.table_gpa and len(segs) > 1:
            if chain.table_kind != TABLE_PACKED:
                for i, (addr, length, w) in enumerate(segs):
                    DESCRIPTOR.pack_into(
                        self.mem.buf, chain.table_gpa + 16 * i, addr, length, 0, F_WRITE if w else 0
                    )
                chain.table_kind = TABLE_PACKED
            descs = [(chain.table_gpa, 16 * len(segs), F_INDIRECT)]
        else:
            last = len(segs) - 1
            descs = [
                (addr, length, (F_WRITE if w else 0) | (F_NEXT if i < last else 0))
                for i, (addr, length, w) in enumerate(segs)
            ]
        if len(descs) > self.num_free or not self._free_ids:
            raise RingFull(f"chain of {len(descs)} > {self.num_free} free slots")
        buffer_id = self._free_ids.pop()
        self._slots[buffer_id] = len(descs)
        self.num_free -= len(descs)
        self._write(descs, buffer_id, raw=False)
        return buffer_id

    def post_raw(self, descs: Sequence[RawDesc], buffer_id: int, raw_flags: bool = False) -> None:
        """Write hand-made descriptors at the next slots (`RawDesc.next` is ignored).

        Unless `raw_flags`, AVAIL/USED are set for the current lap; with it, the flags are
        written exactly as given (to fake stale or half-made descriptors).
        """
        if len(descs) > self.num_free or buffer_id not in self._free_ids:
            raise ValueError("no room for the raw chain or buffer id in use")
        self._free_ids.remove(buffer_id)
        self._slots[buffer_id] = len(descs)
        self.num_free -= len(descs)
        self._write([(d.addr, d.length, d.flags) for d in descs], buffer_id, raw_flags)

    def kick_needed(self) -> bool:
        """Must the device be kicked for the descriptors written since the last call?"""
        added, self._added = self._added, 0
        if not added:
            return False
        full_barrier()
        at = self.device_event // 2
        off_wrap, flags = self.mem.u16[at], self.mem.u16[at + 1]
        if flags != EVENT_DESC or not self.event_idx:
            return bool(flags != EVENT_DISABLE)
        new = self.next_avail
        old = new - added
        event = off_wrap & 0x7FFF
        if off_wrap >> 15 != self.avail_wrap:
            event -= self.num
        return need_event(event, new, old)

    def _used_ready(self) -> bool:
        flags = self.mem.u16[(self.ring + 14) // 2 + 8 * self.next_used]
        wrap = bool(self.used_wrap)
        return bool(flags & F_AVAIL) == wrap and bool(flags & F_USED) == wrap

    def poll_used(self) -> list[tuple[int, int]]:
        """Consume used descriptors: [(buffer id, bytes written)]."""
        done: list[tuple[int, int]] = []
        while self._used_ready():
            length, buffer_id = USED_PART.unpack_from(
                self.mem.buf, self.ring + 16 * self.next_used + 8
            )
            slots = self._slots[buffer_id] if buffer_id < self.num else 0
            if not slots:
                raise DeviceMisbehaved(f"used descriptor for buffer {buffer_id}, not in flight")
            self._slots[buffer_id] = 0
            self._free_ids.append(buffer_id)
            self.num_free += slots
            self.next_used += slots
            if self.next_used >= self.num:
                self.next_used -= self.num
                self.used_wrap ^= 1
            done.append((buffer_id, length))
        return done

    def arm_interrupt(self) -> bool:
        """Ask for an interrupt at the next used descriptor; True if one is already there."""
        u16, at = self.mem.u16, self.driver_event // 2
        if self.event_idx:
            u16[at] = self.next_used | self.used_wrap << 15
            u16[at + 1] = EVENT_DESC
        else:
            u16[at + 1] = EVENT_ENABLE
        full_barrier()
        return self._used_ready()
