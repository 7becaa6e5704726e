"""RAFS v6 bootstrap reader: the EROFS subset Nydus writes (rafs-format §4).

Theory of operation: the EROFS superblock, the Nydus extended superblock, the device table
and the blob table are validated at open. Inodes are decoded on demand (bounded cache) from
their 32-byte slot: `offset = meta_blkaddr * 4096 + nid * 32`; the exposed inode number is
the nid, so hardlinks, which share one nid, share one `Ino`. Directory blocks are decoded on
demand too (bounded cache). Regular files are chunk based: an 8-byte chunk index per image
chunk names (blob, chunk-info index, block address); the full chunk record comes from the
bootstrap's chunk table or, when the image has none, from a blob's chunk-info array attached
with `attach_blob_meta`.

Invariants enforced before use: every inode, xattr area, data block, inline tail and chunk
index array lies inside the buffer; directory blocks have increasing name offsets inside the
block; a chunk's recorded block address and size agree with its chunk index and the file.
Directory walks touch one block per step, so a hostile directory cannot make them loop.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from ..algorithms import algorithms_from_flags, compressor_from_id, digester_from_id
from ..blobinfo import (
    MAX_COMPRESSED_SIZE,
    MAX_UNCOMPRESSED_SIZE,
    BlobFeatures,
    BlobInfo,
    BlobMetaLocation,
    check_features,
    decode_blob_id,
)
from ..bootstrap import ChunkSource, Entry, align, check_name, check_range, unpack
from ..errors import FormatError, NotFound, Unsupported
from ..inode import ChunkRef, Ino, Inode
from ..records import Buffer
from ..v5.layout import (
    CHUNK_BATCH,
    CHUNK_COMPRESSED,
    CHUNK_ENCRYPTED,
    CHUNK_HAS_CRC32,
    ChunkRecord,
    is_power_of_two_chunk,
)
from . import layout as L

_BLOCK: Final = 1 << L.BLOCK_SIZE_BITS
_INODE_CACHE: Final = 16384
_DIR_BLOCK_CACHE: Final = 1024
_COOKIE_SHIFT: Final = 12  # readdir cookie = block << 12 | entry (at most 341 per block)
_MAX_CHUNK_COUNT: Final = 1 << 24  # ci indexes are 24 bits (§4.5)
_VALID_LAYOUTS: Final = (L.LAYOUT_FLAT_PLAIN, L.LAYOUT_FLAT_INLINE, L.LAYOUT_CHUNK_BASED)


@dataclass(frozen=True, slots=True)
class _Node:
    """A validated inode and where its parts live."""

    nid: int  # inode number in the image (32-byte slot index)
    offset: int  # byte offset of the inode
    head: L.CompactInode | L.ExtendedInode  # the decoded inode
    size_on_disk: int  # 32 or 64 bytes
    xattr_size: int  # bytes of the inline xattr area (0 if none)

    @property
    def layout(self) -> int:
        return (self.head.format >> 1) & 0x7

    @property
    def base(self) -> int:
        """Byte offset right after inode and xattrs: inline tail / chunk indexes."""
        return self.offset + self.size_on_disk + self.xattr_size


@dataclass(frozen=True, slots=True)
class _DirBlock:
    names: tuple[bytes, ...]  # entry names, sorted
    nids: tuple[int, ...]  # target nid of each entry


class V6Bootstrap:
    """A validated RAFS v6 bootstrap over a buffer (see the module docstring)."""

    version = 6

    def __init__(self, buf: Buffer) -> None:
        self._buf = memoryview(buf).cast("B")
        self._len = len(self._buf)
        if self._len % _BLOCK:
            raise FormatError(f"v6: bootstrap size {self._len} is not a multiple of {_BLOCK}")
        self._sb = unpack(L.ErofsSuperBlock, self._buf, L.SUPERBLOCK_OFFSET, "EROFS superblock")
        self._ext = unpack(L.ExtSuperBlock, self._buf, L.EXT_SUPERBLOCK_OFFSET,
                           "RAFS v6 extended superblock")
        self.compressor, self.digester = algorithms_from_flags(self._ext.flags,
                                                               legacy_defaults=False)
        if not is_power_of_two_chunk(self._ext.chunk_size):
            raise FormatError(f"v6: bad chunk size {self._ext.chunk_size:#x}")
        self.chunk_size = self._ext.chunk_size
        self.inode_count = self._sb.inos
        self.root_ino = Ino(self._sb.root_nid)
        self.blobs = self._read_blobs()
        self.prefetch_inos = self._read_prefetch()
        self._chunk_table: dict[tuple[int, int], int] | None = None
        self._sources: dict[int, ChunkSource] = {}
        self._node = lru_cache(maxsize=_INODE_CACHE)(self._load_node)
        self._inode = lru_cache(maxsize=_INODE_CACHE)(self._make_inode)
        self._dir_block = lru_cache(maxsize=_DIR_BLOCK_CACHE)(self._load_dir_block)
        if not stat.S_ISDIR(self._node(self.root_ino).head.mode):
            raise FormatError(f"v6: root nid {self.root_ino} is not a directory")

    # -- tables --------------------------------------------------------------------------

    def _read_blobs(self) -> tuple[BlobInfo, ...]:
        ext, sb = self._ext, self._sb
        size, offset = ext.blob_table_size, ext.blob_table_offset
        if size % L.BlobTableEntryV6.SIZE or (size and offset % _BLOCK):
            raise FormatError(f"v6: blob table of {size} bytes at offset {offset}")
        check_range(self._len, offset, size, "v6 blob table")
        count = size // L.BlobTableEntryV6.SIZE
        if count != sb.extra_devices:
            raise FormatError(f"v6: {count} blobs but {sb.extra_devices} devices")
        check_range(self._len, sb.devt_slotoff * L.DeviceSlot.SIZE, count * L.DeviceSlot.SIZE,
                    "v6 device table")
        return tuple(self._blob_info(i, offset + i * L.BlobTableEntryV6.SIZE)
                     for i in range(count))

    def _blob_info(self, index: int, offset: int) -> BlobInfo:
        where = f"v6 blob table entry {index} at offset {offset}"
        e = unpack(L.BlobTableEntryV6, self._buf, offset, where)
        blob_id = decode_blob_id(e.blob_id, where)
        slot_off = self._sb.devt_slotoff * L.DeviceSlot.SIZE + index * L.DeviceSlot.SIZE
        slot = unpack(L.DeviceSlot, self._buf, slot_off, f"v6 device slot {index}")
        if decode_blob_id(slot.blob_id, f"v6 device slot {index}") != blob_id:
            raise FormatError(f"{where}: blob id differs from device slot {index}")
        features = check_features(e.features, where)
        _check_blob_entry(e, index, self.chunk_size, features, where)
        return BlobInfo(
            index=index, blob_id=blob_id, compressor=compressor_from_id(e.compressor, where),
            digester=digester_from_id(e.digester, where), chunk_size=e.chunk_size,
            chunk_count=e.chunk_count, compressed_size=e.compressed_size,
            uncompressed_size=e.uncompressed_size, features=features,
            meta=BlobMetaLocation(compressor_from_id(e.ci_compressor, where), e.ci_offset,
                                  e.ci_compressed_size, e.ci_uncompressed_size),
            toc_size=e.blob_toc_size,
            toc_digest=e.blob_toc_digest if e.blob_toc_size else None)

    def _read_prefetch(self) -> tuple[Ino, ...]:
        offset, size = self._ext.prefetch_table_offset, self._ext.prefetch_table_size
        if size == 0:
            return ()
        if size % 4:
            raise FormatError(f"v6: prefetch table size {size} is not a multiple of 4")
        check_range(self._len, offset, size, "v6 prefetch table")
        nids: list[Ino] = []
        for (nid,) in struct.iter_unpack("<I", self._buf[offset:offset + size]):
            if nid == 0:
                break
            nids.append(Ino(nid))
        return tuple(nids)

    # -- inodes --------------------------------------------------------------------------

    def _load_node(self, nid: int) -> _Node:
        offset = self._sb.meta_blkaddr * _BLOCK + nid * L.SLOT_SIZE
        where = f"v6 inode nid {nid}"
        if nid < 0 or offset + L.CompactInode.SIZE > self._len:
            raise NotFound(f"{where}: offset {offset} outside the bootstrap")
        (fmt,) = struct.unpack_from("<H", self._buf, offset)
        cls: type[L.CompactInode | L.ExtendedInode] = (
            L.ExtendedInode if fmt & L.FORMAT_EXTENDED else L.CompactInode)
        head = unpack(cls, self._buf, offset, where)
        xattr_size = 12 + 4 * (head.xattr_icount - 1) if head.xattr_icount else 0
        node = _Node(nid, offset, head, cls.SIZE, xattr_size)
        check_range(self._len, offset, cls.SIZE + xattr_size, where)
        if fmt & ~0xF or node.layout not in _VALID_LAYOUTS:
            raise Unsupported(f"{where} at offset {offset}: i_format {fmt:#x}")
        _check_type_layout(node, where)
        return node

    def inode(self, ino: int) -> Inode:
        return self._inode(ino)

    def _make_inode(self, ino: int) -> Inode:
        node = self._node(ino)
        head = node.head
        if isinstance(head, L.ExtendedInode):
            mtime, mtime_nsec = head.mtime, head.mtime_nsec
        else:  # compact inodes have no time; EROFS uses the build time
            mtime, mtime_nsec = self._sb.build_time, self._sb.build_time_nsec
        special = stat.S_ISCHR(head.mode) or stat.S_ISBLK(head.mode)
        return Inode(ino=Ino(ino), mode=head.mode, uid=head.uid, gid=head.gid, size=head.size,
                     nlink=head.nlink, rdev=head.i_u if special else 0, mtime=mtime,
                     mtime_nsec=mtime_nsec, blocks=(head.size + 511) // 512, parent=None,
                     has_xattrs=node.xattr_size > 0)

    # -- flat data: directories and symlinks --------------------------------------------

    def _data_block(self, node: _Node, block: int) -> memoryview:
        """Bytes of data block `block` of a flat-layout inode (the last may be short)."""
        size = node.head.size
        length = min(_BLOCK, size - block * _BLOCK)
        where = f"v6 inode nid {node.nid} block {block}"
        if length <= 0:
            raise FormatError(f"{where}: beyond size {size}")
        if node.layout == L.LAYOUT_FLAT_INLINE and block == size // _BLOCK:
            start = node.base  # the tail shares the inode's block
        else:
            start = (node.head.i_u + block) * _BLOCK
        check_range(self._len, start, length, where)
        return self._buf[start:start + length]

    def readlink(self, inode: Inode) -> bytes:
        node = self._node(inode.ino)
        if not 0 < node.head.size <= L.MAX_SYMLINK:
            raise FormatError(f"v6 symlink nid {node.nid}: target length {node.head.size}")
        return b"".join(bytes(self._data_block(node, b))
                        for b in range((node.head.size + _BLOCK - 1) // _BLOCK))

    def _load_dir_block(self, nid: int, block: int) -> _DirBlock:
        data = self._data_block(self._node(nid), block)
        where = f"v6 directory nid {nid} block {block}"
        first = unpack(L.Dirent, data, 0, where)
        count = first.nameoff // L.Dirent.SIZE
        if first.nameoff % L.Dirent.SIZE or count == 0 or first.nameoff > len(data):
            raise FormatError(f"{where}: first name offset {first.nameoff}")
        dirents = [first] + [unpack(L.Dirent, data, j * L.Dirent.SIZE, where)
                             for j in range(1, count)]
        ends = [d.nameoff for d in dirents[1:]] + [len(data)]
        names: list[bytes] = []
        for dirent, end in zip(dirents, ends, strict=True):
            if not dirent.nameoff < end <= len(data) or dirent.file_type > L.FT_MAX:
                raise FormatError(f"{where}: entry {len(names)} name {dirent.nameoff}..{end}")
            name = bytes(data[dirent.nameoff:end]).split(b"\0", 1)[0]
            check_name(name, where)
            names.append(name)
        return _DirBlock(tuple(names), tuple(d.nid for d in dirents))

    def _dir_blocks(self, directory: Inode) -> int:
        return (directory.size + _BLOCK - 1) // _BLOCK

    def lookup(self, directory: Inode, name: bytes) -> Ino | None:
        lo, hi = 0, self._dir_blocks(directory)
        while lo < hi:  # blocks hold sorted, contiguous runs of names (§4.10)
            mid = (lo + hi) // 2
            block = self._dir_block(directory.ino, mid)
            if name < block.names[0]:
                hi = mid
            elif name > block.names[-1]:
                lo = mid + 1
            else:
                return _search_block(block, name)
        return None

    def entries(self, directory: Inode, cookie: int) -> Iterator[Entry]:
        block, position = divmod(max(cookie, 0), 1 << _COOKIE_SHIFT)
        for b in range(block, self._dir_blocks(directory)):
            data = self._dir_block(directory.ino, b)
            for j in range(position, len(data.names)):
                nxt = (b << _COOKIE_SHIFT) | (j + 1)
                if j + 1 == len(data.names):
                    nxt = (b + 1) << _COOKIE_SHIFT
                yield nxt, data.names[j], Ino(data.nids[j])
            position = 0

    # -- xattrs --------------------------------------------------------------------------

    def xattrs(self, inode: Inode) -> dict[bytes, bytes]:
        node = self._node(inode.ino)
        if not node.xattr_size:
            return {}
        start = node.offset + node.size_on_disk
        area = bytes(self._buf[start:start + node.xattr_size])
        where = f"v6 inode nid {node.nid} xattrs at offset {start}"
        header = unpack(L.XattrHeader, area, 0, where)
        if header.shared_count:
            raise Unsupported(f"{where}: {header.shared_count} shared xattrs")
        return _parse_xattr_entries(area, L.XattrHeader.SIZE, where)

    def verify_digests(self) -> bytes:
        raise Unsupported("RAFS v6 inodes carry no digests; verify chunks instead")

    # -- chunks --------------------------------------------------------------------------

    def attach_source(self, blob_index: int, source: ChunkSource) -> None:
        """Resolve chunks of blob `blob_index` through `source` (e.g. its blob meta)."""
        if not 0 <= blob_index < len(self.blobs):
            raise NotFound(f"v6: no blob index {blob_index}")
        self._sources[blob_index] = source

    def chunks(self, inode: Inode, start: int, end: int) -> list[ChunkRef]:
        node = self._node(inode.ino)
        size, chunk_size = node.head.size, self.chunk_size
        fmt = node.head.i_u & 0xFFFF
        where = f"v6 inode nid {node.nid}"
        if not fmt & L.CHUNK_FORMAT_INDEXES or fmt & ~0x3F:
            raise Unsupported(f"{where}: chunk format {fmt:#x}")
        count = (size + chunk_size - 1) // chunk_size
        array = align(node.base, 8)
        check_range(self._len, array, count * L.ChunkIndex.SIZE, f"{where} chunk indexes")
        refs: list[ChunkRef] = []
        for i in range(start // chunk_size, min(count, (end + chunk_size - 1) // chunk_size)):
            index = unpack(L.ChunkIndex, self._buf, array + i * L.ChunkIndex.SIZE, where)
            length = min(chunk_size, size - i * chunk_size)
            refs.append(self._chunk_ref(index, i * chunk_size, length, f"{where} chunk {i}"))
        return refs

    def _chunk_ref(self, index: L.ChunkIndex, file_offset: int, length: int,
                   where: str) -> ChunkRef:
        if index.blkaddr == L.NULL_ADDR:
            return ChunkRef.hole(file_offset, length)
        blob_index = index.device - 1
        if not 0 <= blob_index < len(self.blobs):
            raise FormatError(f"{where}: device {index.device} of {len(self.blobs)} blobs")
        chunk = self._chunk_record(blob_index, index.ci_index, where)
        if (chunk.uncompressed_offset // _BLOCK != index.blkaddr
                or chunk.uncompressed_size != length or chunk.blob_index != blob_index):
            raise FormatError(f"{where}: chunk record (blob {chunk.blob_index}, uncompressed "
                              f"{chunk.uncompressed_offset}+{chunk.uncompressed_size}) does "
                              f"not match index (blob {blob_index}, block {index.blkaddr}, "
                              f"length {length})")
        if chunk.flags & (CHUNK_ENCRYPTED | CHUNK_BATCH):
            raise Unsupported(f"{where}: encrypted or batch chunk (flags {chunk.flags:#x})")
        return ChunkRef(file_offset=file_offset, uncompressed_size=length,
                        blob_index=blob_index, compressed_offset=chunk.compressed_offset,
                        compressed_size=chunk.compressed_size,
                        uncompressed_offset=chunk.uncompressed_offset,
                        digest=chunk.digest if any(chunk.digest) else None,
                        is_compressed=bool(chunk.flags & CHUNK_COMPRESSED),
                        chunk_index=index.ci_index,
                        crc32=chunk.crc32 if chunk.flags & CHUNK_HAS_CRC32 else None)

    def _chunk_record(self, blob_index: int, ci_index: int, where: str) -> ChunkRecord:
        source = self._sources.get(blob_index)
        if source is not None:
            return source.chunk(ci_index)
        table = self._chunk_positions()
        position = table.get((blob_index, ci_index))
        if position is None:
            raise Unsupported(f"{where}: chunk (blob {blob_index}, ci {ci_index}) is not in "
                              f"the chunk table; attach the blob meta")
        offset = self._ext.chunk_table_offset + position * ChunkRecord.SIZE
        return unpack(ChunkRecord, self._buf, offset, f"v6 chunk table entry {position}")

    def _chunk_positions(self) -> Mapping[tuple[int, int], int]:
        """(blob index, ci index) -> chunk table position, built on first use."""
        if self._chunk_table is None:
            offset, size = self._ext.chunk_table_offset, self._ext.chunk_table_size
            if size % ChunkRecord.SIZE:
                raise FormatError(f"v6: chunk table size {size} is not a multiple of 80")
            check_range(self._len, offset, size, "v6 chunk table")
            table: dict[tuple[int, int], int] = {}
            records = ChunkRecord.STRUCT.iter_unpack(self._buf[offset:offset + size])
            for position, fields in enumerate(records):
                table.setdefault((fields[1], fields[8]), position)
            self._chunk_table = table
        return self._chunk_table


def _check_blob_entry(e: L.BlobTableEntryV6, index: int, chunk_size: int,
                      features: BlobFeatures, where: str) -> None:
    if e.blob_index != index or e.chunk_size != chunk_size:
        raise FormatError(f"{where}: index {e.blob_index}, chunk size {e.chunk_size}")
    if (e.uncompressed_size > MAX_UNCOMPRESSED_SIZE or e.compressed_size > MAX_COMPRESSED_SIZE
            or e.chunk_count > _MAX_CHUNK_COUNT):
        raise FormatError(f"{where}: sizes out of range")
    if e.ci_compressed_size > e.ci_uncompressed_size and e.ci_compressor == 0:
        raise FormatError(f"{where}: uncompressed chunk-info sizes differ")
    special = features & (BlobFeatures.BATCH | BlobFeatures.ZRAN | BlobFeatures.ENCRYPTED)
    record = 24 if features & BlobFeatures.CHUNK_INFO_V2 else 16
    if not special and e.ci_uncompressed_size != record * e.chunk_count:
        raise FormatError(f"{where}: chunk-info size {e.ci_uncompressed_size} for "
                          f"{e.chunk_count} chunks")


def _check_type_layout(node: _Node, where: str) -> None:
    mode, layout = node.head.mode, node.layout
    if stat.S_ISREG(mode):
        if layout != L.LAYOUT_CHUNK_BASED:
            raise Unsupported(f"{where}: regular file with layout {layout} (data in bootstrap)")
    elif stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        if layout == L.LAYOUT_CHUNK_BASED:
            raise FormatError(f"{where}: chunk-based directory or symlink")
    elif stat.S_IFMT(mode) not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        raise FormatError(f"{where} at offset {node.offset}: bad mode {mode:#o}")


def _search_block(block: _DirBlock, name: bytes) -> Ino | None:
    lo, hi = 0, len(block.names)
    while lo < hi:
        mid = (lo + hi) // 2
        if block.names[mid] == name:
            return Ino(block.nids[mid])
        if block.names[mid] < name:
            lo = mid + 1
        else:
            hi = mid
    return None


def _parse_xattr_entries(area: bytes, pos: int, where: str) -> dict[bytes, bytes]:
    """EROFS inline xattr entries, each padded to 4 bytes (§4.8)."""
    result: dict[bytes, bytes] = {}
    while pos + L.XattrEntry.SIZE <= len(area):
        entry = unpack(L.XattrEntry, area, pos, where)
        prefix = L.XATTR_PREFIXES.get(entry.name_index)
        body = pos + L.XattrEntry.SIZE
        value_at = body + entry.name_len
        end = value_at + entry.value_size
        if prefix is None or end > len(area):
            raise FormatError(f"{where}: bad entry at {pos} (prefix {entry.name_index})")
        result[prefix + area[body:value_at]] = area[value_at:end]
        pos = align(end, 4)
    return result
