"""Split virtqueue, device side (virtio 1.2, section 2.7).

Three areas in guest memory: the descriptor table (16 bytes x num), the available ring that
the driver fills (u16 flags, u16 idx, u16 ring[num], u16 used_event) and the used ring that
we fill (u16 flags, u16 idx, {u32 id, u32 len}[num], u16 avail_event). Indices run freely
modulo 2**16; the slot of index k is k % num.

Ordering: the driver publishes ring entries before `avail.idx`; we read `avail.idx` before the
entries. We publish a used element before `used.idx`. x86-64 keeps loads in order and stores
in order, and each Python-level access is a separate C call, so both hold without fences. The
two EVENT_IDX checks need store->load ordering (write our index, then read the driver's);
`full_barrier()` provides it.

Every loop is bounded: a pop walks at most `num` ring descriptors plus one indirect table, and
a driver that claims more than `num` new entries is treated as broken.
"""

from __future__ import annotations

import threading
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

AVAIL_F_NO_INTERRUPT: Final = 1
USED_F_NO_NOTIFY: Final = 1
MAX_QUEUE_SIZE: Final = 32768

_fence = threading.Lock()


def full_barrier() -> None:
    """A locked read-modify-write: orders our earlier stores before our later loads."""
    # CPython has no fence primitive; acquiring an uncontended lock executes an atomic
    # compare-and-swap, which is a full barrier on x86-64 (and on the other CPython targets).
    _fence.acquire()
    _fence.release()


def need_event(event: int, new: int, old: int) -> bool:
    """virtio's vring_need_event: did the index move from `old` to `new` past `event`?"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


class SplitQueue:
    """The device side of one split ring over mapped guest memory."""

    def __init__(
        self,
        memory: GuestMemory,
        num: int,
        desc: memoryview,
        avail: memoryview,
        used: memoryview,
        base: int,
        event_idx: bool,
    ) -> None:
        if num == 0 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise ChainError(f"split ring size {num} is not a power of two <= {MAX_QUEUE_SIZE}")
        if len(desc) != 16 * num or len(avail) != 6 + 2 * num or len(used) != 6 + 8 * num:
            raise GuestMemoryError("ring areas do not match the ring size")
        self.memory = memory
        self.num = num
        self.event_idx = event_idx
        self._desc = desc
        self._avail = avail.cast("H")  # [flags, idx, ring[num]..., used_event]
        self._used16 = used[:4].cast("H")  # [flags, idx]
        self._used_elems = used[4 : 4 + 8 * num].cast("I")  # [id, len] pairs
        self._avail_event = used[4 + 8 * num :].cast("H")
        self.last_avail = base & 0xFFFF
        self.used_idx = base & 0xFFFF
        self._signalled_used = self.used_idx  # used.idx at our last notification

    # -- consuming ---------------------------------------------------------------------

    def available(self) -> int:
        """How many chains the driver has made available and we have not popped."""
        pending = (self._avail[1] - self.last_avail) & 0xFFFF
        if pending > self.num:
            raise ChainError(f"driver claims {pending} new entries in a ring of {self.num}")
        return pending

    def pending(self) -> bool:
        """Whether the driver has made a chain available that we have not popped."""
        return self._avail[1] != self.last_avail

    def backlog(self) -> int:
        """How many chains wait to be popped (bounded by the ring: a lying index cannot
        make it more)."""
        return min((self._avail[1] - self.last_avail) & 0xFFFF, self.num)

    def pop(self) -> Chain | None:
        """The next available chain, or None. A malformed chain comes back with `error`."""
        if self.available() == 0:
            return None
        head = self._avail[2 + self.last_avail % self.num]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        chain = Chain(head)
        try:
            self._walk(chain)
        except (ChainError, GuestMemoryError) as exc:
            chain.readable = []
            chain.writable = []
            chain.error = str(exc)
        return chain

    def _walk(self, chain: Chain) -> None:
        index = chain.head
        table = self._desc
        unpack = DESCRIPTOR.unpack_from
        for _ in range(self.num):
            if index >= self.num:
                raise ChainError(f"descriptor index {index} outside a ring of {self.num}")
            addr, length, flags, nxt = unpack(table, index * 16)
            if flags & F_INDIRECT:
                if flags & F_NEXT or chain.readable or chain.writable:
                    raise ChainError("indirect descriptor must stand alone in its chain")
                walk_indirect(self.memory, chain, indirect_table(self.memory, addr, length), False)
                return
            add_buffer(self.memory, chain, addr, length, bool(flags & F_WRITE))
            if not flags & F_NEXT:
                return
            index = nxt
        raise ChainError(f"chain from head {chain.head} is longer than the ring (a loop)")

    # -- completing --------------------------------------------------------------------

    def push(self, chain: Chain, written: int) -> None:
        """Return a chain to the driver with `written` bytes filled in."""
        slot = 2 * (self.used_idx % self.num)
        self._used_elems[slot] = chain.head
        self._used_elems[slot + 1] = written
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._used16[1] = self.used_idx  # after the element: the driver reads idx first

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what we pushed since the last one."""
        old, new = self._signalled_used, self.used_idx
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            full_barrier()  # our used.idx store must be visible before we read used_event
            return need_event(self._avail[2 + self.num], new, old)
        return not self._avail[0] & AVAIL_F_NO_INTERRUPT

    # -- kick suppression ----------------------------------------------------------------

    def enable_kicks(self) -> bool:
        """Ask for a kick on the next new entry; True if entries arrived meanwhile."""
        if self.event_idx:
            self._avail_event[0] = self.last_avail
        else:
            self._used16[0] = 0
        full_barrier()  # publish the request before re-reading avail.idx
        return self._avail[1] != self.last_avail

    def disable_kicks(self) -> None:
        """We are busy draining the ring: kicks would only cost the driver an exit."""
        if not self.event_idx:
            self._used16[0] = USED_F_NO_NOTIFY
        # With EVENT_IDX, leaving avail_event behind last_avail has the same effect.

    def base(self) -> int:
        """GET_VRING_BASE: the index to resume from."""
        return self.last_avail
