"""Placing v6 inodes, inline tails and directory blocks in the meta area (rafs-format §4.13).

The upstream builder's allocator, reproduced so our bootstraps lay out like its output:
a cursor starts at 4096 (shifted later so the root lands at nid 128); the unused tail of a
partially filled 4 KiB block is remembered as a gap, bucketed by free 32-byte slots, and
small allocations (inode + inline tail, or a file inode + its chunk indexes) take the
first gap that fits before the cursor moves on. Directories are placed when they are
processed (numbering order of `Numbering.dirs`), each followed by its non-directory
children in name order; hard links reuse their first name's place.

EROFS constraints this keeps: an inode, its inline xattrs and its inline tail never cross
a block boundary; data blocks are block aligned; inodes are 32-byte aligned (nid units).
"""

from __future__ import annotations

import stat
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..v6.layout import (
    LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE,
    LAYOUT_FLAT_PLAIN,
    SLOT_SIZE,
    XATTR_PREFIXES,
    CompactInode,
    Dirent,
    ExtendedInode,
    XattrEntry,
    XattrHeader,
)
from .numbering import Entry, Numbering

BLOCK: Final = 4096
CHUNK_INDEX_SIZE: Final = 8  # bytes per v6 chunk index record (§4.9.3)
# Longest prefix first would mis-split nothing here; upstream's order (§4.8).
_PREFIX_ORDER: Final = (1, 2, 3, 4, 6)


def split_xattr_name(name: bytes) -> tuple[int, bytes]:
    """(name_index, suffix) of a full xattr name."""
    for index in _PREFIX_ORDER:
        prefix = XATTR_PREFIXES[index]
        if name.startswith(prefix):
            return index, name[len(prefix):]
    raise ValueError(f"xattr {name!r} has no EROFS prefix")  # tree.keep_xattr filtered it


def xattr_area_size(xattrs: dict[bytes, bytes]) -> int:
    """Bytes of the inline xattr area (header + 4-byte aligned entries), 0 without xattrs."""
    if not xattrs:
        return 0
    size = XattrHeader.SIZE
    for name, value in xattrs.items():
        size += -(-(XattrEntry.SIZE + len(split_xattr_name(name)[1]) + len(value)) // 4) * 4
    return size


def dirent_names(entry: Entry) -> list[bytes]:
    return sorted([b".", b".."] + [c.name for c in entry.children])


def dir_size(names: list[bytes]) -> int:
    """Directory i_size: dirents fill blocks greedily, a block never splits an entry (§4.10)."""
    size = 0
    for name in names:
        length = Dirent.SIZE + len(name)
        if size % BLOCK + length > BLOCK:
            size = -(-size // BLOCK) * BLOCK
        size += length
    return size


@dataclass(slots=True)
class Placement:
    """Where one inode lives (offsets before the final shift to meta_blkaddr)."""

    offset: int  # bytes: the inode
    compact: bool  # 32-byte compact inode, else 64-byte extended
    layout: int  # LAYOUT_*
    size: int  # i_size
    inode_size: int  # inode + inline xattr area
    data_offset: int = 0  # dirs/symlinks: first full data block (block aligned)

    @property
    def tail_offset(self) -> int:
        """Where the inline tail starts (right after inode and xattrs)."""
        return self.offset + self.inode_size


class MetaSpace:
    """The cursor and the remembered gaps of partially used blocks."""

    def __init__(self) -> None:
        self.cursor = BLOCK
        self._gaps: list[deque[int]] = [deque() for _ in range(BLOCK // SLOT_SIZE)]

    def align(self, unit: int) -> None:
        self.cursor = -(-self.cursor // unit) * unit

    def remember_gap(self, offset: int) -> None:
        """Note the free rest of the block holding `offset` (whole free slots only)."""
        if offset % BLOCK:
            self._gaps[(BLOCK - offset % BLOCK) // SLOT_SIZE].append(offset - offset % BLOCK)

    def take_gap(self, size: int) -> int | None:
        """Start of a remembered gap of at least `size` bytes, or None."""
        if size >= BLOCK:
            return None
        need = -(-size // SLOT_SIZE)
        for slots in range(need, BLOCK // SLOT_SIZE):
            if self._gaps[slots]:
                start = self._gaps[slots].popleft() + BLOCK - slots * SLOT_SIZE
                self.remember_gap(start + need * SLOT_SIZE)
                return start
        return None

    def take(self, size: int) -> int:
        offset, self.cursor = self.cursor, self.cursor + size
        return offset


def use_compact(entry: Entry, size: int, force_extended: bool) -> bool:
    """Upstream's rule: compact unless a field does not fit, or the name ends in `.pyc`."""
    node = entry.node
    return not (force_extended or node.uid > 0xFFFF or node.gid > 0xFFFF
                or entry.nlink > 0xFFFF or size > 0xFFFF_FFFF or entry.name.endswith(b".pyc"))


def _with_tail(space: MetaSpace, inode_size: int, size: int) -> tuple[int, int, int]:
    """(inode offset, data offset, layout) for a directory or symlink of `size` bytes."""
    tail = size % BLOCK
    if tail and inode_size + tail <= BLOCK:
        offset = space.take_gap(inode_size + tail)
        if offset is None:
            if BLOCK - space.cursor % BLOCK < inode_size + tail:
                space.remember_gap(space.cursor)
                space.align(BLOCK)
            offset = space.take(inode_size + tail)
        if size != tail:
            space.remember_gap(space.cursor)
            space.align(BLOCK)
        return offset, space.take(size - tail), LAYOUT_FLAT_INLINE
    offset = space.take_gap(inode_size)
    if offset is None:
        offset = space.take(inode_size)
    space.remember_gap(space.cursor)
    space.align(BLOCK)
    data = space.take(size)
    space.align(BLOCK)
    return offset, data, LAYOUT_FLAT_PLAIN


def _place(space: MetaSpace, entry: Entry, placed: dict[int, Placement],
           force_extended: bool) -> Placement:
    node = entry.node
    size = dir_size(dirent_names(entry)) if node.is_dir else node.size
    compact = use_compact(entry, size, force_extended)
    inode_size = (CompactInode.SIZE if compact else ExtendedInode.SIZE) + \
        xattr_area_size(node.xattrs)
    if node.is_reg:
        if not entry.is_first_link:
            return placed[entry.ino]
        total = -(-inode_size // CHUNK_INDEX_SIZE) * CHUNK_INDEX_SIZE + \
            CHUNK_INDEX_SIZE * len(entry.chunks)
        offset = space.take_gap(total)
        result = Placement(space.take(total) if offset is None else offset, compact,
                           LAYOUT_CHUNK_BASED, size, inode_size)
    elif node.is_dir or stat.S_ISLNK(node.mode):
        offset, data, layout = _with_tail(space, inode_size, size)
        result = Placement(offset, compact, layout, size, inode_size, data)
    else:
        result = Placement(space.take(inode_size), compact, LAYOUT_FLAT_PLAIN, 0, inode_size)
    return result


def place_inodes(numbering: Numbering, force_extended: bool = False) -> dict[int, Placement]:
    """Placement of every entry, by entry index (hard links map to their first name's)."""
    space = MetaSpace()
    placed: dict[int, Placement] = {}
    for directory in numbering.dirs:
        placed[directory.index] = _place(space, directory, placed, force_extended)
        space.align(SLOT_SIZE)
        for child in directory.children:
            if not child.node.is_dir:
                placed[child.index] = _place(space, child, placed, force_extended)
                space.align(SLOT_SIZE)
    return placed
