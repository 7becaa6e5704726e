"""Guest memory: the frontend's shared regions, mapped once, with checked address translation.

The frontend (QEMU) passes one fd per RAM region with SET_MEM_TABLE or ADD_MEM_REG. Each
region covers guest-physical addresses [gpa, gpa + size) and, in QEMU's own address space,
[uaddr, uaddr + size); both are stored in the fd from `mmap_offset` on. Descriptors carry
guest-physical addresses, SET_VRING_ADDR carries QEMU virtual addresses: `view()` and
`uaddr_view()` translate either kind into a memoryview of our mapping.

Invariant: nothing outside the regions is ever reachable. Every translation checks that the
whole range lies inside one region and raises GuestMemoryError otherwise; a range that
straddles two regions is returned as one view per region by `views()`.

This is the only module that uses mmap (style-models.md, section 3).
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
from dataclasses import dataclass
from typing import Final

from vhostfs.errors import GuestMemoryError, VhostUserProtocolError
from vhostfs.vhost_user.messages import MAX_MEM_SLOTS, MemRegion


@dataclass(slots=True)
class MappedRegion:
    gpa: int  # first guest-physical address
    uaddr: int  # first frontend virtual address
    size: int  # bytes
    mmap_offset: int  # where the region starts in its fd
    mapping: mmap.mmap
    view: memoryview  # exactly the region's bytes
    host: int  # our virtual address of view[0] (for iovecs handed to the kernel)

    @property
    def gpa_end(self) -> int:
        return self.gpa + self.size

    def same(self, region: MemRegion) -> bool:
        return (
            self.gpa == region.guest_phys_addr
            and self.uaddr == region.userspace_addr
            and self.size == region.memory_size
        )


def map_region(region: MemRegion, fd: int) -> MappedRegion:
    """Map `region` from `fd` (the caller keeps ownership of the fd and may close it)."""
    region.validate()
    # A mapping past the end of the file maps fine but SIGBUSes the daemon on first touch:
    # a frontend that lies about the region size must be refused here, not discovered later.
    try:
        file_size = os.fstat(fd).st_size
    except OSError as exc:
        raise VhostUserProtocolError(f"memory region fd is unusable: {exc}") from exc
    if region.mmap_offset + region.memory_size > file_size:
        raise VhostUserProtocolError(
            f"memory region {region.memory_size:#x}@{region.mmap_offset:#x} runs past the "
            f"end of its {file_size:#x}-byte fd"
        )
    # mmap needs a page-aligned offset: map from the page below and slice the rest off.
    slack = region.mmap_offset % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(
            fd,
            region.memory_size + slack,
            flags=mmap.MAP_SHARED,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=region.mmap_offset - slack,
        )
    except (OSError, ValueError, OverflowError) as exc:
        raise VhostUserProtocolError(f"cannot map memory region {region}: {exc}") from exc
    view = memoryview(mapping)[slack : slack + region.memory_size]
    anchor = ctypes.c_char.from_buffer(mapping, slack)  # an export of its own: drop it now
    host = ctypes.addressof(anchor)
    del anchor
    return MappedRegion(
        region.guest_phys_addr,
        region.userspace_addr,
        region.memory_size,
        region.mmap_offset,
        mapping,
        view,
        host,
    )


def _unmap(region: MappedRegion) -> None:
    region.view.release()
    try:
        region.mapping.close()
    except BufferError:
        # A request still holds a slice of this region (its chain is in flight): the
        # mapping goes away with the last reference instead.
        pass


# Translations remembered per memory table: a guest that reuses its I/O buffers (dd, a
# read loop, the request buffers its FUSE driver recycles) sends the same indirect tables
# over and over. Each entry is a few views; the oldest goes first.
TRANSLATIONS: Final = 256


class GuestMemory:
    """The current memory table of one frontend connection."""

    def __init__(self) -> None:
        self._regions: list[MappedRegion] = []
        self._last: MappedRegion | None = None  # most recent hit: descriptors cluster
        # Translations derived from this table (the chain walk keeps decoded indirect tables
        # here, chain.py); emptied whenever the table changes, so nothing in it can outlive
        # the regions it points into.
        self.translations: dict[object, object] = {}

    def remember(self, key: object, value: object) -> None:
        """Keep a translation, forgetting the oldest beyond TRANSLATIONS entries."""
        if len(self.translations) >= TRANSLATIONS:
            del self.translations[next(iter(self.translations))]
        self.translations[key] = value

    @property
    def regions(self) -> tuple[MappedRegion, ...]:
        return tuple(self._regions)

    def set_table(self, regions: list[MemRegion], fds: list[int]) -> None:
        """Replace the whole table (SET_MEM_TABLE); fds stay owned by the caller."""
        if len(regions) != len(fds):
            raise VhostUserProtocolError(f"{len(regions)} regions but {len(fds)} fds")
        mapped: list[MappedRegion] = []
        try:
            for region, fd in zip(regions, fds, strict=True):
                mapped.append(map_region(region, fd))
            _check_disjoint(mapped)
        except BaseException:
            for m in mapped:
                _unmap(m)
            raise
        self.clear()
        self._regions = sorted(mapped, key=lambda r: r.gpa)

    def add_region(self, region: MemRegion, fd: int) -> None:
        """ADD_MEM_REG: one more region; fd stays owned by the caller."""
        if len(self._regions) >= MAX_MEM_SLOTS:
            raise VhostUserProtocolError("more memory regions than the slots we announced")
        mapped = map_region(region, fd)
        candidate = sorted([*self._regions, mapped], key=lambda r: r.gpa)
        try:
            _check_disjoint(candidate)
        except VhostUserProtocolError:
            _unmap(mapped)
            raise
        self._regions = candidate
        self.translations.clear()

    def remove_region(self, region: MemRegion) -> None:
        """REM_MEM_REG: the region is identified by gpa, uaddr and size."""
        for mapped in self._regions:
            if mapped.same(region):
                self._regions.remove(mapped)
                self._last = None
                self.translations.clear()
                _unmap(mapped)
                return
        raise VhostUserProtocolError(f"no memory region matches {region}")

    def clear(self) -> None:
        self.translations.clear()
        for mapped in self._regions:
            _unmap(mapped)
        self._regions = []
        self._last = None

    def hot_region(self) -> tuple[int, int, memoryview]:
        """(first gpa, end gpa, view) of the most recently used region, for inline slicing.

        An empty range when nothing has been translated yet; callers fall back to `views`.
        """
        region = self._last
        if region is None:
            return 0, 0, memoryview(b"")
        return region.gpa, region.gpa + region.size, region.view

    def hot_mapping(self) -> MappedRegion | None:
        """The most recently used region itself (its view and host address), if any."""
        return self._last

    def view(self, gpa: int, size: int) -> memoryview:
        """The guest-physical range [gpa, gpa + size) as one view; it must fit one region."""
        region = self._last
        if region is None or not (region.gpa <= gpa and gpa + size <= region.gpa + region.size):
            region = self._find(gpa, size)
        start = gpa - region.gpa
        return region.view[start : start + size]

    def views(self, gpa: int, size: int) -> list[memoryview]:
        """Like `view`, but a range that crosses from one region into the next is split."""
        region = self._last
        if region is not None and region.gpa <= gpa and gpa + size <= region.gpa + region.size:
            start = gpa - region.gpa
            return [region.view[start : start + size]]
        out: list[memoryview] = []
        while size:
            region = self._find(gpa, 1)
            start = gpa - region.gpa
            take = min(size, region.size - start)
            out.append(region.view[start : start + take])
            gpa += take
            size -= take
        return out

    def uaddr_view(self, uaddr: int, size: int) -> memoryview:
        """A frontend virtual-address range (ring addresses) as a view of one region."""
        for region in self._regions:
            if region.uaddr <= uaddr and uaddr + size <= region.uaddr + region.size:
                start = uaddr - region.uaddr
                return region.view[start : start + size]
        raise GuestMemoryError(f"frontend address range {uaddr:#x}+{size:#x} is not mapped")

    def _find(self, gpa: int, size: int) -> MappedRegion:
        if size < 0:
            raise GuestMemoryError(f"negative length at guest address {gpa:#x}")
        for region in self._regions:
            if region.gpa <= gpa and gpa + size <= region.gpa + region.size:
                self._last = region
                return region
        raise GuestMemoryError(f"guest address range {gpa:#x}+{size:#x} is not in guest memory")


def _check_disjoint(regions: list[MappedRegion]) -> None:
    ordered = sorted(regions, key=lambda r: r.gpa)
    for a, b in itertools.pairwise(ordered):
        if a.gpa_end > b.gpa:
            raise VhostUserProtocolError(f"memory regions overlap at {b.gpa:#x}")


def close_fds(fds: list[int]) -> None:
    """Close received fds we do not keep (mappings stay valid after the close)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
