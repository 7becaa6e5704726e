"""Writing a RAFS v6 bootstrap: an EROFS image whose files are chunk indexes into blobs.

Layout written (rafs-format §4.1): EROFS superblock at 1024, the RAFS extended superblock,
one 128-byte device slot per blob at 1408, the blob table at the next 4 KiB boundary, then
the meta area (`meta_blkaddr`, first block left empty so the root gets nid 128) holding
inodes, inline xattrs, inline tails and directory blocks as `v6place` arranged them, then
the chunk table (80-byte records sorted by digest and blob) and zero padding to 4 KiB.

What the kernel needs (and `fsck.erofs` checks): blocks of 4096, chunk-based regular files
with 8-byte chunk indexes (device id = blob index + 1, blkaddr = uncompressed offset / 4096
on that device), every blob listed in the device table with its block count, and
`extra_devices` set. With uncompressed chunks, a blob's uncompressed address space is the
blob file itself, so blobs can be handed to the kernel as devices directly.
"""

from __future__ import annotations

import math
import stat
from typing import Final

from ..algorithms import Compressor, Digester, RafsFlags
from ..blobinfo import BlobInfo
from ..v5.layout import ChunkRecord
from ..v6.layout import (
    BLOCK_SIZE_BITS,
    CHUNK_FORMAT_INDEXES,
    EROFS_MAGIC,
    EXT_SUPERBLOCK_OFFSET,
    FEATURE_COMPAT_RAFS_V6,
    FEATURE_INCOMPAT_CHUNKED_FILE,
    FEATURE_INCOMPAT_DEVICE_TABLE,
    FORMAT_EXTENDED,
    LAYOUT_FLAT_PLAIN,
    SLOT_SIZE,
    SUPERBLOCK_OFFSET,
    BlobTableEntryV6,
    ChunkIndex,
    CompactInode,
    DeviceSlot,
    Dirent,
    ErofsSuperBlock,
    ExtendedInode,
    ExtSuperBlock,
    XattrEntry,
    XattrHeader,
)
from .errors import BuildError
from .numbering import Entry, Numbering
from .v6place import (
    BLOCK,
    CHUNK_INDEX_SIZE,
    Placement,
    dirent_names,
    place_inodes,
    split_xattr_name,
)

DEVICE_TABLE_OFFSET: Final = 1408  # 11 slots of 128 bytes (§4.2 devt_slotoff)
MAPPED_ALIGNMENT: Final = 0x8_0000  # 512 KiB: block-device export alignment (§4.4)
MAX_BLOBS: Final = 254  # device ids are one byte, 0 invalid
COMPRESSOR_FLAGS: Final = {Compressor.NONE: RafsFlags.COMPRESSION_NONE,
                           Compressor.LZ4_BLOCK: RafsFlags.COMPRESSION_LZ4,
                           Compressor.ZSTD: RafsFlags.COMPRESSION_ZSTD,
                           Compressor.GZIP: RafsFlags.COMPRESSION_GZIP}
DIGESTER_FLAGS: Final = {Digester.BLAKE3: RafsFlags.HASH_BLAKE3,
                         Digester.SHA256: RafsFlags.HASH_SHA256}
_FILE_TYPES: Final = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFCHR: 3, stat.S_IFBLK: 4,
                      stat.S_IFIFO: 5, stat.S_IFSOCK: 6, stat.S_IFLNK: 7}


def _align(value: int, unit: int) -> int:
    return -(-value // unit) * unit


class V6Writer:
    """Serialises one numbered, chunked tree; `write()` returns the bootstrap bytes."""

    def __init__(self, numbering: Numbering, blobs: list[BlobInfo], chunk_size: int,
                 compressor: Compressor, digester: Digester,
                 force_extended: bool = False) -> None:
        if len(blobs) > MAX_BLOBS:
            raise BuildError(f"{len(blobs)} blobs; RAFS v6 allows {MAX_BLOBS}")
        self.numbering, self.blobs, self.chunk_size = numbering, blobs, chunk_size
        self.compressor, self.digester = compressor, digester
        self.placed = place_inodes(numbering, force_extended)
        self.blob_table_offset = _align(DEVICE_TABLE_OFFSET + DeviceSlot.SIZE * len(blobs),
                                        BLOCK)
        blob_table_end = self.blob_table_offset + BlobTableEntryV6.SIZE * len(blobs)
        # The root sits at cursor 4096: with blobs the meta area starts after the blob
        # table, without it starts at 0; either way the root's nid is 4096 / 32 = 128.
        self.meta_addr = _align(blob_table_end, BLOCK) if blobs else 0
        self.buf = bytearray()

    def nid(self, entry: Entry) -> int:
        return self.placed[entry.index].offset // SLOT_SIZE

    def _put(self, offset: int, data: bytes) -> None:
        offset += self.meta_addr
        if len(self.buf) < offset + len(data):
            self.buf.extend(bytes(offset + len(data) - len(self.buf)))
        self.buf[offset:offset + len(data)] = data

    def write(self) -> bytes:
        for entry in self.numbering.level_order():
            if not entry.node.is_reg or entry.is_first_link:
                self._write_entry(entry)
        self._pad()
        chunk_table_offset = len(self.buf)
        table = self._chunk_table()
        self.buf.extend(b"".join(r.pack() for r in table))
        self._pad()
        self._write_head(chunk_table_offset, len(table) * ChunkRecord.SIZE)
        return bytes(self.buf)

    def _pad(self) -> None:
        self.buf.extend(bytes(_align(len(self.buf), BLOCK) - len(self.buf)))

    # -- inodes ------------------------------------------------------------------------

    def _write_entry(self, entry: Entry) -> None:
        p = self.placed[entry.index]
        node = entry.node
        if node.is_reg:
            i_u = self._write_chunk_indexes(entry, p)
        elif node.is_dir:
            i_u = self._write_dir(entry, p)
        elif node.is_symlink:
            assert node.target is not None
            i_u = self._write_data(p, node.target)
        else:
            i_u = node.rdev
        self._put(p.offset, self._inode(entry, p, i_u) + self._xattrs(entry))

    def _inode(self, entry: Entry, p: Placement, i_u: int) -> bytes:
        node = entry.node
        icount = (p.inode_size - (CompactInode.SIZE if p.compact else ExtendedInode.SIZE))
        icount = (icount - XattrHeader.SIZE) // 4 + 1 if icount else 0
        if p.compact:
            return CompactInode(p.layout << 1, icount, node.mode, entry.nlink, p.size, i_u,
                                entry.ino, node.uid, node.gid).pack()
        return ExtendedInode(FORMAT_EXTENDED | p.layout << 1, icount, node.mode, p.size, i_u,
                             entry.ino, node.uid, node.gid, node.mtime, node.mtime_nsec,
                             entry.nlink).pack()

    def _xattrs(self, entry: Entry) -> bytes:
        if not entry.node.xattrs:
            return b""
        parts = [XattrHeader(0, 0).pack()]
        for name, value in sorted(entry.node.xattrs.items()):
            index, suffix = split_xattr_name(name)
            item = XattrEntry(len(suffix), index, len(value)).pack() + suffix + value
            parts.append(item + bytes(-len(item) % 4))
        return b"".join(parts)

    def _write_data(self, p: Placement, data: bytes) -> int:
        """Full blocks at data_offset, the tail inline or as the last block; returns i_u."""
        full = len(data) if p.layout == LAYOUT_FLAT_PLAIN else len(data) - len(data) % BLOCK
        if full:
            self._put(p.data_offset, data[:full])
        if full < len(data):
            self._put(p.tail_offset, data[full:])
        return (p.data_offset + self.meta_addr) // BLOCK

    def _write_dir(self, entry: Entry, p: Placement) -> int:
        nids = {b".": self.nid(entry), b"..": self.nid(entry.parent or entry)}
        types = {b".": 2, b"..": 2}
        for child in entry.children:
            nids[child.name] = self.nid(child)
            types[child.name] = _FILE_TYPES.get(stat.S_IFMT(child.node.mode), 0)
        blocks: list[bytes] = []
        group: list[bytes] = []
        used = 0
        for name in dirent_names(entry):
            if used + Dirent.SIZE + len(name) > BLOCK:
                blocks.append(self._dir_block(group, nids, types).ljust(BLOCK, b"\0"))
                group, used = [], 0
            group.append(name)
            used += Dirent.SIZE + len(name)
        blocks.append(self._dir_block(group, nids, types))
        data = b"".join(blocks)
        assert len(data) == p.size, (len(data), p.size)
        return self._write_data(p, data)

    @staticmethod
    def _dir_block(names: list[bytes], nids: dict[bytes, int], types: dict[bytes, int]) -> bytes:
        nameoff = Dirent.SIZE * len(names)
        heads = []
        for name in names:
            heads.append(Dirent(nids[name], nameoff, types[name]).pack())
            nameoff += len(name)
        return b"".join(heads) + b"".join(names)

    def _write_chunk_indexes(self, entry: Entry, p: Placement) -> int:
        indexes = []
        continuous = True
        previous: ChunkRecord | None = None
        for chunk in entry.chunks:
            if previous is not None and (
                    previous.blob_index != chunk.blob_index
                    or previous.uncompressed_offset + self.chunk_size != chunk.uncompressed_offset):
                continuous = False
            previous = chunk
            hi = (chunk.blob_index + 1) | (chunk.index >> 16) << 8
            indexes.append(ChunkIndex(chunk.index & 0xFFFF, hi,
                                      chunk.uncompressed_offset // BLOCK).pack())
        self._put(_align(p.tail_offset, CHUNK_INDEX_SIZE), b"".join(indexes))
        # Lets the kernel map a contiguous file with one index (upstream's page-cache trick).
        size = self.chunk_size
        if continuous and p.size > self.chunk_size:
            size = 1 << (p.size - 1).bit_length()
        return CHUNK_FORMAT_INDEXES | (int(math.log2(size)) - BLOCK_SIZE_BITS)

    # -- tables ------------------------------------------------------------------------

    def _chunk_table(self) -> list[ChunkRecord]:
        table: dict[tuple[bytes, int], ChunkRecord] = {}
        for entry in self.numbering.level_order():
            for chunk in entry.chunks:
                table[(chunk.digest, chunk.blob_index)] = chunk
        return [table[key] for key in sorted(table)]

    def _flags(self) -> int:
        flags = (COMPRESSOR_FLAGS[self.compressor] | DIGESTER_FLAGS[self.digester]
                 | RafsFlags.EXPLICIT_UID_GID | RafsFlags.ENCRYPTION_NONE)
        if any(e.node.xattrs for e in self.numbering.entries):
            flags |= RafsFlags.HAS_XATTR
        if all(b.features & b.features.INLINED_CHUNK_DIGEST for b in self.blobs):
            flags |= RafsFlags.INLINED_CHUNK_DIGEST
        return int(flags)

    def _write_head(self, chunk_table_offset: int, chunk_table_size: int) -> None:
        slots, blocks = self._device_slots()
        sb = ErofsSuperBlock(EROFS_MAGIC, 0, FEATURE_COMPAT_RAFS_V6, BLOCK_SIZE_BITS, 0,
                             self.nid(self.numbering.root), len(self.numbering.entries), 0, 0,
                             blocks, self.meta_addr // BLOCK, 0, bytes(16), bytes(16),
                             FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE, 0,
                             len(self.blobs), DEVICE_TABLE_OFFSET // DeviceSlot.SIZE)
        ext = ExtSuperBlock(self._flags(), self.blob_table_offset,
                            BlobTableEntryV6.SIZE * len(self.blobs), self.chunk_size,
                            chunk_table_offset, chunk_table_size, 0, 0, 0)
        sb.pack_into(self.buf, SUPERBLOCK_OFFSET)
        ext.pack_into(self.buf, EXT_SUPERBLOCK_OFFSET)
        for i, slot in enumerate(slots):
            slot.pack_into(self.buf, DEVICE_TABLE_OFFSET + i * DeviceSlot.SIZE)
        for i, blob in enumerate(self.blobs):
            blob_table_entry(blob).pack_into(
                self.buf, self.blob_table_offset + i * BlobTableEntryV6.SIZE)

    def _device_slots(self) -> tuple[list[DeviceSlot], int]:
        slots, total = [], 0
        position = len(self.buf)
        for blob in self.blobs:
            count = (blob.uncompressed_size or 0) // BLOCK
            mapped = _align(position, MAPPED_ALIGNMENT) // BLOCK
            position = (mapped + count) * BLOCK
            total += count
            slots.append(DeviceSlot(blob.blob_id.encode().ljust(64, b"\0"), count, mapped))
        return slots, total


def blob_table_entry(blob: BlobInfo) -> BlobTableEntryV6:
    """The 256-byte v6 blob table entry describing `blob` (§4.5)."""
    meta = blob.meta
    return BlobTableEntryV6(
        blob.blob_id.encode(), blob.index, blob.chunk_size, blob.chunk_count or 0,
        blob.compressor, blob.digester, int(blob.features), blob.compressed_size or 0,
        blob.uncompressed_size or 0, blob.toc_size, meta.compressor if meta else 0,
        meta.offset if meta else 0, meta.compressed_size if meta else 0,
        meta.uncompressed_size if meta else 0, blob.toc_digest or bytes(32), bytes(32), 0, 0, 0)
