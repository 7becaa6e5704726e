"""Descriptor chains: what the device pops from a ring, and the bounded walk that builds them.

Virtio 1.2, sections 2.7 (split) and 2.8 (packed). A chain is a sequence of descriptors,
device-readable ones first and device-writable ones after. A descriptor may instead point to
an *indirect table*: an array of descriptors in guest memory that replaces the rest of the
chain. Both ring formats share the rules enforced here:

* every address range is translated through GuestMemory (never outside guest memory);
* a readable descriptor after a writable one is an error;
* an indirect table may not contain another indirect descriptor, must be a whole number of
  16-byte descriptors, and is bounded by MAX_INDIRECT entries;
* a walk visits at most `limit` descriptors, so a loop (split `next` pointing back) ends.

A malformed chain does not crash anything: the walk raises ChainError and the queue returns
the chain to the driver with used length 0.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Final, cast

from vhostfs.errors import ChainError
from vhostfs.virtio.guestbufs import GuestBuffers
from vhostfs.virtio.memory import GuestMemory

# Descriptor flags shared by split and packed rings (virtio 1.2, 2.7.5 / 2.8.12).
F_NEXT: Final = 1
F_WRITE: Final = 2
F_INDIRECT: Final = 4

# Largest indirect table we walk; QEMU's own limit for a virtqueue element is 1024.
MAX_INDIRECT: Final = 1024

# Split and packed descriptors are both 16 bytes: u64 addr, u32 len, u16, u16. The last two
# are (flags, next) in a split ring and (id, flags) in a packed one.
DESCRIPTOR: Final = struct.Struct("<QIHH")


# Tables longer than this take the column-wise fast path; on shorter ones (every request
# but a multi-page READ or WRITE) its fixed cost loses to the plain loop (measured: 4
# entries 2.9 us looped against 5.6 us column-wise, even at 16).
COLUMNAR_MIN: Final = 16

# A chain with at least this many writable buffers keeps them as a GuestBuffers (addresses,
# no views): a READ reply of many pages. Below it, views are cheaper than the ctypes call.
MANY_BUFFERS: Final = 8


@dataclass(slots=True)
class Chain:
    """One popped request: its id for the used ring and its guest buffers."""

    head: int  # split: head descriptor index; packed: buffer id
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] | GuestBuffers = field(default_factory=list)
    ring_descs: int = 1  # descriptors it occupied in the ring (packed rings need it)
    error: str | None = None  # set when the chain was malformed: answer with length 0


def add_buffer(memory: GuestMemory, chain: Chain, addr: int, length: int, writable: bool) -> None:
    """Translate one descriptor's buffer and append it to the chain."""
    if not length:
        return
    views = memory.views(addr, length)
    if writable:
        assert isinstance(chain.writable, list)  # GuestBuffers only come from walk_indirect
        chain.writable.extend(views)
    elif chain.writable:
        raise ChainError("readable descriptor after a writable one")
    else:
        chain.readable.extend(views)


def indirect_table(memory: GuestMemory, addr: int, length: int) -> memoryview:
    """The indirect descriptor table at `addr`, validated for size."""
    if length == 0 or length % DESCRIPTOR.size:
        raise ChainError(f"indirect table of {length} bytes is not whole descriptors")
    if length // DESCRIPTOR.size > MAX_INDIRECT:
        raise ChainError(f"indirect table of {length // DESCRIPTOR.size} descriptors")
    return memory.view(addr, length)


@functools.lru_cache(maxsize=64)
def _table_struct(count: int) -> struct.Struct:
    """One struct for a whole table of `count` descriptors: a single C call decodes it."""
    return struct.Struct("<" + "QIHH" * count)


# A remembered walk: the readable views and the writable ones (views, or GuestBuffers, which
# never change after construction and so can be shared by every chain with the same table).
_Decoded = tuple[tuple[memoryview, ...], "tuple[memoryview, ...] | GuestBuffers"]


def _walk_known_or_columns(
    memory: GuestMemory, chain: Chain, table: memoryview, count: int, packed: bool
) -> bool:
    """The column-wise walk of our own copy of the table, remembered per memory table.

    The copy is decoded, never the guest's table, so nothing the guest writes meanwhile can
    slip between the checks and the use; and the same bytes always decode to the same
    buffers, so a guest that reuses its I/O buffers (dd, a read loop: the same table each
    time) finds its table decoded, its READ pages' iovec array already packed.
    """
    key = (packed, bytes(table))
    known = memory.translations.get(key)
    if known is not None:
        readable, writable = cast(_Decoded, known)
        chain.readable = list(readable)
        chain.writable = writable if type(writable) is GuestBuffers else list(writable)
        return True
    if not _walk_columns(memory, chain, memoryview(key[1]), count, packed):
        return False
    out = chain.writable
    shared = out if type(out) is GuestBuffers else tuple(out)
    decoded: _Decoded = (tuple(chain.readable), shared)
    memory.remember(key, decoded)
    return True


def _walk_columns(
    memory: GuestMemory, chain: Chain, table: memoryview, count: int, packed: bool
) -> bool:
    """The fast path for the layout Linux writes: entries in table order, readable ones first,
    every buffer inside the hot memory region. Returns False to let the general walk decide
    (and report) anything else.

    Works on whole columns of the table, each read by one C call through a cast of the table
    (addresses as u64, lengths as u32, flags and next as u16), and checks the flags and links
    against the exact column Linux writes, so a 1 MiB READ's 259 descriptors cost no Python
    loop at all, and no int object for columns of small values.
    """
    words = table.cast("H")  # 8 per descriptor: addr x4, len x2, then (flags, next) or (id, flags)
    flags = words[7::8].tolist() if packed else words[6::8].tolist()
    first_write = 0
    while first_write < count and not flags[first_write] & F_WRITE:
        first_write += 1  # a few readable entries (header, arguments) come first
    if flags != _expected_flags(count, first_write, packed):
        return False  # INDIRECT inside, a missing NEXT, a readable after a writable, ...
    if not packed and words[7:-8:8].tolist() != _SEQUENTIAL_NEXT[: count - 1]:
        return False  # split tables must link entry i to i + 1
    addrs = table.cast("Q")[0::2].tolist()
    lengths = table.cast("I")[2::4].tolist()
    if 0 in lengths:
        return False
    mapped = memory.hot_mapping()
    if mapped is None:
        return False
    base, region = mapped.gpa, mapped.view
    # The largest address plus the largest length bounds every buffer's end without adding
    # 259 pairs; a table this misses (buffers near the region's end) takes the exact walk.
    if min(addrs) < base or max(addrs) + max(lengths) > mapped.gpa_end:
        return False
    chain.readable = [
        region[a - base : a - base + n]
        for a, n in zip(addrs[:first_write], lengths[:first_write], strict=True)
    ]
    if count - first_write >= MANY_BUFFERS:
        # region[:] is a view of our own: it keeps the mapping alive for the raw addresses.
        out = addrs[first_write:], lengths[first_write:]
        chain.writable = GuestBuffers(region[:], base, mapped.host, *out)
    else:
        chain.writable = [
            region[a - base : a - base + n]
            for a, n in zip(addrs[first_write:], lengths[first_write:], strict=True)
        ]
    return True


@functools.lru_cache(maxsize=256)
def _expected_flags(count: int, first_write: int, packed: bool) -> list[int]:
    """The flags column of a well-formed table: readable entries, then writable ones; in a
    split table every entry but the last also carries NEXT."""
    if packed:
        return [0] * first_write + [F_WRITE] * (count - first_write)
    column = [F_NEXT] * first_write + [F_NEXT | F_WRITE] * (count - first_write)
    column[-1] &= ~F_NEXT
    return column


# The next-index column of a table whose entries link in order: 1, 2, 3, ...
_SEQUENTIAL_NEXT: Final = list(range(1, MAX_INDIRECT + 1))


def walk_indirect(memory: GuestMemory, chain: Chain, table: memoryview, packed: bool) -> None:
    """Walk an indirect table: split tables follow `next`, packed tables run in order.

    This is the hot path of every request from a Linux guest (one indirect table per
    request, up to 259 entries for a 1 MiB READ), so the table is decoded in one C call,
    addresses inside the most recently used memory region are sliced inline, and buffers
    that continue exactly where the previous one ended are merged into one view (fewer
    iovecs for preadv/pwritev, fewer objects).
    """
    count = len(table) // DESCRIPTOR.size
    if count > COLUMNAR_MIN:
        if _walk_known_or_columns(memory, chain, table, count, packed):
            return
        _walk_rows(memory, chain, table, count, packed)
        return
    # A short table (every request but a multi-page READ or WRITE): the same bytes always
    # decode to the same buffers, and guests reuse their request buffers, so the decoded
    # walk is remembered per memory table like the long ones. Decoding our copy also keeps
    # the guest from changing the table between check and use.
    key = (packed, bytes(table))
    known = memory.translations.get(key)
    if known is not None:
        readable, writable = cast(_Decoded, known)
        chain.readable = list(readable)
        chain.writable = list(writable)  # views: a short table never makes GuestBuffers
        return
    _walk_rows(memory, chain, memoryview(key[1]), count, packed)
    assert isinstance(chain.writable, list)
    memory.remember(key, (tuple(chain.readable), tuple(chain.writable)))


def _walk_rows(
    memory: GuestMemory, chain: Chain, table: memoryview, count: int, packed: bool
) -> None:
    """The general walk, entry by entry, for any table the fast paths do not take."""
    flat = _table_struct(count).unpack(table)
    rows = list(zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4], strict=True))
    readable, writable = chain.readable, chain.writable
    assert isinstance(writable, list)  # the fast path above did not take this chain
    base, end, region = memory.hot_region()
    last_end = -1  # guest address right after the previous buffer, for merging
    index = 0
    for _ in range(count):
        if packed:
            addr, length, _, flags = rows[index]
        else:
            addr, length, flags, nxt = rows[index]
        if flags & F_INDIRECT:
            raise ChainError("indirect descriptor inside an indirect table")
        if length:
            is_write = flags & F_WRITE
            target = writable if is_write else readable
            if not is_write and writable:
                raise ChainError("readable descriptor after a writable one")
            if base <= addr and addr + length <= end:
                offset = addr - base
                if addr == last_end and target:
                    merged = target[-1]
                    start = offset - len(merged)
                    target[-1] = region[start : offset + length]
                else:
                    target.append(region[offset : offset + length])
                last_end = addr + length
            else:
                target.extend(memory.views(addr, length))
                base, end, region = memory.hot_region()
                last_end = -1
        if packed:
            index += 1
            if index == count:
                return
            continue
        if not flags & F_NEXT:
            return
        if nxt >= count:
            raise ChainError(f"indirect next index {nxt} outside a table of {count}")
        index = nxt
    if not packed:
        raise ChainError("indirect chain longer than its table (a loop)")
