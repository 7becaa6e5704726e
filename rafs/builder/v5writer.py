"""Writing a RAFS v5 bootstrap (rafs-format §3).

Order written, as upstream: the 8192-byte superblock, the inode table (one u32 per inode
index: record offset / 8), the blob table, the extended blob table, then the inode records
in depth-first pre-order of the tree (the inode table still maps numbering order). A record
is the 128-byte header, the name and symlink target (each padded to 8), the xattr table and,
for regular files, one 80-byte chunk record per chunk. Every record carries the digest of
its subtree (§3.11), computed bottom-up here.

Builder-computed fields follow the fixtures: directory size = align(Σ(name + 8), 4096) (4096
when empty), blocks = ceil((size + xattr table) / 512), the root's name is "/" and its mtime
0 (repeatable builds), a directory's nlink is 2 + subdirectories.
"""

from __future__ import annotations

import struct
from typing import Final

from ..algorithms import Compressor, Digester, RafsFlags, digest
from ..blobinfo import BlobInfo
from ..v5.layout import (
    INODE_SYMLINK,
    INODE_XATTR,
    MAGIC,
    SUPERBLOCK_SIZE,
    VERSION,
    BlobEntryHeadV5,
    ExtBlobEntryV5,
    InodeV5,
    SuperBlockV5,
    XattrPairHeadV5,
    XattrTableHeadV5,
)
from .errors import BuildError
from .numbering import Entry, Numbering
from .v6writer import COMPRESSOR_FLAGS, DIGESTER_FLAGS

VIRTUAL_DIRENT_SIZE: Final = 8  # bytes per name in the v5 directory size rule
MAX_TABLE_VALUE: Final = 1 << 29  # inode table stores offset >> 3 below this (§3.3)


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


def xattr_table(xattrs: dict[bytes, bytes]) -> bytes:
    """The v5 xattr table: u64 size, pairs `len name NUL value`, padding to 8 (§3.9)."""
    pairs = b"".join(XattrPairHeadV5(len(name) + 1 + len(value)).pack() + name + b"\0" + value
                     for name, value in sorted(xattrs.items()))
    return _pad8(XattrTableHeadV5(len(pairs)).pack() + pairs)


def dir_size(entry: Entry) -> int:
    total = sum(len(c.name) + VIRTUAL_DIRENT_SIZE for c in entry.children)
    return -(-total // 4096) * 4096 if total else 4096


class V5Writer:
    """Serialises one numbered, chunked tree; `write()` returns the bootstrap bytes."""

    def __init__(self, numbering: Numbering, blobs: list[BlobInfo], chunk_size: int,
                 compressor: Compressor, digester: Digester) -> None:
        self.numbering, self.blobs, self.chunk_size = numbering, blobs, chunk_size
        self.compressor, self.digester = compressor, digester
        self.digests = self._digests()

    def _digests(self) -> dict[int, bytes]:
        """Merkle digest of every entry (children before parents: reverse numbering order)."""
        result: dict[int, bytes] = {}
        for entry in reversed(self.numbering.entries):
            node = entry.node
            if node.is_reg:
                data = b"".join(c.digest for c in entry.chunks)
            elif node.is_symlink:
                data = node.target or b""
            elif node.is_dir:
                data = b"".join(result[c.index] for c in entry.children)
            else:
                data = b""
            result[entry.index] = digest(self.digester, data)
        return result

    def _record(self, entry: Entry) -> bytes:
        node = entry.node
        xattrs = xattr_table(node.xattrs) if node.xattrs else b""
        flags = (INODE_SYMLINK if node.is_symlink else 0) | (INODE_XATTR if xattrs else 0)
        if node.is_dir:
            size, child_index, child_count = dir_size(entry), 0, len(entry.children)
            if entry.children:
                child_index = entry.children[0].index
            blocks = -(-(size + max(len(xattrs) - 8, 0)) // 512)
        else:
            size, child_index, child_count = node.size, 0, len(entry.chunks)
            blocks = -(-size // 512)
        target = node.target or b""
        parent = entry.parent.ino if entry.parent else 0
        mtime, mtime_nsec = (0, 0) if entry.parent is None else (node.mtime, node.mtime_nsec)
        head = InodeV5(self.digests[entry.index], parent, entry.ino, node.uid, node.gid, 0,
                       node.mode, size, blocks, flags, entry.nlink, child_index, child_count,
                       len(entry.name), len(target), node.rdev, mtime_nsec, mtime)
        return b"".join([head.pack(), _pad8(entry.name), _pad8(target), xattrs]
                        + [c.pack() for c in entry.chunks])

    def _blob_tables(self) -> tuple[bytes, bytes]:
        ids = [BlobEntryHeadV5(0, 0).pack() + b.blob_id.encode() for b in self.blobs]
        table = _pad8(b"\0".join(ids))
        ext = b"".join(ExtBlobEntryV5(b.chunk_count or 0, int(b.features),
                                      b.uncompressed_size or 0, b.compressed_size or 0).pack()
                       for b in self.blobs)
        return table, ext

    def _flags(self) -> int:
        flags = (COMPRESSOR_FLAGS[self.compressor] | DIGESTER_FLAGS[self.digester]
                 | RafsFlags.EXPLICIT_UID_GID)
        if any(e.node.xattrs for e in self.numbering.entries):
            flags |= RafsFlags.HAS_XATTR
        return int(flags)

    def write(self) -> bytes:
        entries = self.numbering.entries
        table_size = -(-4 * len(entries) // 8) * 8
        blob_table, ext_table = self._blob_tables()
        blob_offset = SUPERBLOCK_SIZE + table_size
        ext_offset = blob_offset + len(blob_table)
        records = [(e.index, self._record(e)) for e in self.numbering.preorder()]
        offsets = [0] * len(entries)
        position = ext_offset + len(ext_table)
        for index, record in records:
            if position >> 3 >= MAX_TABLE_VALUE:
                raise BuildError("v5 bootstrap larger than 4 GiB")
            offsets[index - 1] = position >> 3
            position += len(record)
        distinct = sum(1 for e in entries if not e.node.is_reg or e.is_first_link)
        sb = SuperBlockV5(MAGIC, VERSION, SUPERBLOCK_SIZE, self.chunk_size, self._flags(),
                          distinct, SUPERBLOCK_SIZE, blob_offset, blob_offset, len(entries), 0,
                          len(blob_table), len(self.blobs), ext_offset)
        inode_table = _pad8(struct.pack(f"<{len(offsets)}I", *offsets))
        return b"".join([sb.pack(), inode_table, blob_table, ext_table]
                        + [record for _, record in records])
