"""Guest RAM as a test frontend presents it: one memfd, two regions around a hole, an allocator.

QEMU 7.2 shares a guest's RAM as one memfd described by two regions with the VGA/option-ROM
hole between them (reference/vhost-user-virtiofs.md, 6.2): [0, 640 KiB) and [768 KiB, end),
each with `mmap_offset` equal to its guest-physical address. We reproduce that layout so a
backend's translation is exercised across both regions, and invent "userspace addresses"
(uaddr = UADDR_BASE + gpa) for SET_VRING_ADDR just as QEMU passes its own virtual addresses.

Because gpa == offset in the memfd, the driver reaches guest address `gpa` at byte `gpa` of
its own mapping. The allocator hands out buffers from the upper region only (the lower one is
left for hand-placed bad-input tests) and keeps exact-size free lists so benchmark loops that
free and reallocate the same shapes never fragment.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

from vhostfs.vhost_user.messages import MemRegion

HOLE_START: Final = 0xA0000  # 640 KiB: end of region 0 (QEMU's low RAM)
HOLE_END: Final = 0xC0000  # 768 KiB: start of region 1
# Fake frontend virtual address of gpa 0; any page-aligned value a backend cannot map itself.
UADDR_BASE: Final = 0x7F00_0000_0000
PAGE: Final = 4096


class OutOfGuestMemory(MemoryError):
    """The test asked for more guest memory than the memfd holds."""


class DriverMemory:
    """The guest's RAM seen from the driver: an mmapped memfd plus a simple allocator.

    Resource handling: owns the memfd and the mapping; `close()` releases both (views handed
    out by `view()` must be released first).
    """

    def __init__(self, size: int, uaddr_base: int = UADDR_BASE) -> None:
        if size % PAGE or size <= HOLE_END + PAGE:
            raise ValueError(f"guest memory of {size} bytes: need whole pages above 768 KiB")
        self.size = size
        self.uaddr_base = uaddr_base
        self.fd = os.memfd_create("vhostfs-test-guest", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # One memoryview over all of RAM: ring and buffer accessors index it by gpa.
        self.buf = memoryview(self._map)
        # Shared ring indexes and flags must be written with one store each. struct's
        # pack_into zero-fills its destination before packing, so a concurrent reader can see
        # 0 in the middle of an update (the C virtiofsd then panics: "Guest moved used index
        # from N to 0"). Item assignment through these casts is a single aligned store.
        self.u16 = self.buf.cast("H")  # index gpa // 2
        self.u32 = self.buf.cast("I")  # index gpa // 4
        self.regions: tuple[MemRegion, ...] = (
            MemRegion(0, HOLE_START, uaddr_base, 0),
            MemRegion(HOLE_END, size - HOLE_END, uaddr_base + HOLE_END, HOLE_END),
        )
        self._next = HOLE_END  # bump pointer
        self._free: dict[int, list[int]] = {}  # rounded size -> freed gpas

    def uaddr(self, gpa: int) -> int:
        """The frontend virtual address of `gpa` (what SET_VRING_ADDR carries)."""
        return self.uaddr_base + gpa

    def alloc(self, size: int, align: int = 64) -> int:
        """Allocate `size` bytes (rounded up to `align`, at least 64) and zero them."""
        align = max(align, 64)
        rounded = -(-max(size, 1) // align) * align
        reuse = self._free.get(rounded)
        if reuse:
            # Exact-size reuse keeps the alignment of the first allocation of that size;
            # only sizes that are multiples of `align` are pooled, so that holds.
            for i, gpa in enumerate(reuse):
                if gpa % align == 0:
                    del reuse[i]
                    self.buf[gpa : gpa + rounded] = bytes(rounded)
                    return gpa
        gpa = -(-self._next // align) * align
        if gpa + rounded > self.size:
            raise OutOfGuestMemory(f"{rounded} bytes requested, guest memory exhausted")
        self._next = gpa + rounded
        self.buf[gpa : gpa + rounded] = bytes(rounded)
        return gpa

    def free(self, gpa: int, size: int, align: int = 64) -> None:
        """Return an allocation made with the same `size` and `align`."""
        align = max(align, 64)
        rounded = -(-max(size, 1) // align) * align
        self._free.setdefault(rounded, []).append(gpa)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.buf[gpa : gpa + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.buf[gpa : gpa + length])

    def view(self, gpa: int, length: int) -> memoryview:
        """A live view of guest bytes (release it before `close()`)."""
        return self.buf[gpa : gpa + length]

    def close(self) -> None:
        if self.fd < 0:
            return
        self.u16.release()
        self.u32.release()
        self.buf.release()
        self._map.close()
        os.close(self.fd)
        self.fd = -1
