"""Packed virtqueue, device side (virtio 1.2, section 2.8).

One ring of 16-byte descriptors {u64 addr, u32 len, u16 id, u16 flags} shared by both sides,
plus two 4-byte event suppression areas {u16 off_wrap, u16 flags}: the driver's (vhost
`avail` address), which tells us when to interrupt, and ours (vhost `used` address), which
tells the driver when to kick.

A descriptor is available when its AVAIL bit equals our avail wrap counter and its USED bit
does not. A chain occupies consecutive slots linked by NEXT; its buffer id is the id of its
last descriptor. We complete a buffer by writing one descriptor at our used position with the
id, the written length and AVAIL = USED = our used wrap counter; the flags are stored last so
the driver never sees a half-written element. Both positions advance by the number of slots
the chain occupied, flipping their wrap counter when they pass the end.

GET/SET_VRING_BASE carry the state as one u32: bits 0-14 next avail index, bit 15 avail wrap
counter, bits 16-30 used index, bit 31 used wrap counter (QEMU's encoding).
"""

from __future__ import annotations

import struct
from typing import Final

from vhostfs.errors import ChainError, GuestMemoryError
from vhostfs.virtio.chain import (
    DESCRIPTOR,
    F_INDIRECT,
    F_NEXT,
    F_WRITE,
    Chain,
    add_buffer,
    indirect_table,
    walk_indirect,
)
from vhostfs.virtio.memory import GuestMemory
from vhostfs.virtio.ring import MAX_QUEUE_SIZE, full_barrier

F_AVAIL: Final = 1 << 7
F_USED: Final = 1 << 15

# Event suppression flags (2.8.10).
EVENT_ENABLE: Final = 0
EVENT_DISABLE: Final = 1
EVENT_DESC: Final = 2

# The part of a descriptor the device writes back: u32 len, u16 id (at byte 8).
USED_ELEMENT: Final = struct.Struct("<IH")


def packed_need_event(off_wrap: int, new: int, old: int, used_wrap: int, num: int) -> bool:
    """Did our used index move from `old` to `new` past the driver's event offset?

    The driver's offset carries its own wrap bit; an offset from the other lap is moved back
    by `num` so that one u16 comparison covers both (as QEMU's vring_packed_need_event).
    When we wrapped between `old` and `new` the comparison errs towards notifying, which
    costs the guest an interrupt but never loses one.
    """
    event = off_wrap & 0x7FFF
    if (off_wrap >> 15) != used_wrap:
        event -= num
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


class PackedQueue:
    """The device side of one packed ring over mapped guest memory."""

    def __init__(
        self,
        memory: GuestMemory,
        num: int,
        ring: memoryview,
        driver_event: memoryview,
        device_event: memoryview,
        base: int,
        event_idx: bool,
    ) -> None:
        if num == 0 or num > MAX_QUEUE_SIZE:
            raise ChainError(f"packed ring size {num} out of range")
        if len(ring) != 16 * num or len(driver_event) != 4 or len(device_event) != 4:
            raise GuestMemoryError("packed ring areas do not match the ring size")
        self.memory = memory
        self.num = num
        self.event_idx = event_idx
        self._ring = ring
        self._flags = ring.cast("H")  # the flags of slot i are at index 8 * i + 7
        self._driver_event = driver_event.cast("H")  # [off_wrap, flags]
        self._device_event = device_event.cast("H")
        self.last_avail = base & 0x7FFF
        self.avail_wrap = (base >> 15) & 1
        self.used_idx = (base >> 16) & 0x7FFF
        self.used_wrap = (base >> 31) & 1
        if self.last_avail >= num or self.used_idx >= num:
            raise ChainError(f"packed ring base {base:#x} outside a ring of {num}")
        self._signalled = self.used_idx  # used index at our last notification

    def _is_available(self, slot: int) -> bool:
        flags = self._flags[8 * slot + 7]
        return bool(flags & F_AVAIL) == bool(self.avail_wrap) and bool(flags & F_USED) != bool(
            self.avail_wrap
        )

    def pending(self) -> bool:
        """Whether the driver has made a chain available that we have not popped."""
        return self._is_available(self.last_avail)

    def backlog(self) -> int:
        """How many chains wait to be popped: a packed ring has no index to tell without
        walking the descriptors, so 0 ("unknown"), and the minimum batch decides."""
        return 0

    def pop(self) -> Chain | None:
        """The next available chain, or None. A malformed chain comes back with `error`."""
        if not self._is_available(self.last_avail):
            return None
        chain = Chain(0)
        try:
            slots = self._chain_slots()
        except ChainError as exc:
            # We cannot tell where this chain ends: the ring is unusable from here on.
            chain.error = str(exc)
            chain.ring_descs = 1
            self._advance(1)
            return chain
        chain.ring_descs = len(slots)
        try:
            self._translate(chain, slots)
        except (ChainError, GuestMemoryError) as exc:
            chain.readable = []
            chain.writable = []
            chain.error = str(exc)
        self._advance(len(slots))
        return chain

    def _chain_slots(self) -> list[int]:
        """The ring slots of the chain at last_avail: consecutive, linked by NEXT."""
        slots = []
        slot = self.last_avail
        wrap = self.avail_wrap
        for _ in range(self.num):
            flags = self._flags[8 * slot + 7]
            if bool(flags & F_AVAIL) != bool(wrap) or bool(flags & F_USED) == bool(wrap):
                raise ChainError("packed chain continues into a slot that is not available")
            slots.append(slot)
            if not flags & F_NEXT:
                return slots
            slot += 1
            if slot == self.num:
                slot, wrap = 0, wrap ^ 1
        raise ChainError("packed chain longer than the ring")

    def _translate(self, chain: Chain, slots: list[int]) -> None:
        unpack = DESCRIPTOR.unpack_from
        for slot in slots:
            addr, length, buffer_id, flags = unpack(self._ring, slot * 16)
            chain.head = buffer_id  # the id of the last descriptor names the buffer
            if flags & F_INDIRECT:
                if len(slots) != 1:
                    raise ChainError("indirect descriptor must stand alone in its chain")
                table = indirect_table(self.memory, addr, length)
                walk_indirect(self.memory, chain, table, True)
            else:
                add_buffer(self.memory, chain, addr, length, bool(flags & F_WRITE))

    def _advance(self, count: int) -> None:
        self.last_avail += count
        if self.last_avail >= self.num:
            self.last_avail -= self.num
            self.avail_wrap ^= 1

    def push(self, chain: Chain, written: int) -> None:
        """Complete a buffer: id and length first, flags (the publication) last."""
        slot = self.used_idx
        USED_ELEMENT.pack_into(self._ring, slot * 16 + 8, written, chain.head)
        flags = (F_AVAIL | F_USED) if self.used_wrap else 0
        if written:
            flags |= F_WRITE
        self._flags[8 * slot + 7] = flags
        self.used_idx += chain.ring_descs
        if self.used_idx >= self.num:
            self.used_idx -= self.num
            self.used_wrap ^= 1

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what we pushed since the last one."""
        old = self._signalled
        if old == self.used_idx:
            return False
        self._signalled = self.used_idx
        full_barrier()  # our used descriptors must be visible before we read the driver's event
        off_wrap, flags = self._driver_event[0], self._driver_event[1]
        if flags == EVENT_DISABLE:
            return False
        if flags == EVENT_DESC and self.event_idx:
            return packed_need_event(off_wrap, self.used_idx, old, self.used_wrap, self.num)
        return True

    def enable_kicks(self) -> bool:
        if self.event_idx:
            self._device_event[0] = self.last_avail | (self.avail_wrap << 15)
            self._device_event[1] = EVENT_DESC
        else:
            self._device_event[1] = EVENT_ENABLE
        full_barrier()
        return self._is_available(self.last_avail)

    def disable_kicks(self) -> None:
        self._device_event[1] = EVENT_DISABLE

    def base(self) -> int:
        return (
            self.last_avail
            | (self.avail_wrap << 15)
            | (self.used_idx << 16)
            | (self.used_wrap << 31)
        )
