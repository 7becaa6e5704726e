"""RAFS v5 bootstrap reader (rafs-format §3).

Theory of operation: the superblock and the small tables (blob tables, prefetch table) are
validated at open; inode records are decoded on demand through a bounded cache. Inode index
k (slot k-1 of the inode table) holds one directory entry; the number the image exposes is
the record's `i_ino`, which equals k except for the second and later links of a hardlink
group (they repeat the first link's `i_ino`). `inode(ino)` therefore accepts only canonical
numbers (slot `ino` holds `i_ino == ino`).

Invariants enforced before use: every record lies inside the buffer with its name, target,
xattr table and chunk array; a directory's children occupy indices strictly greater than
its own (builders assign them breadth-first), so walking children can never loop; chunk
records of a file are in increasing, non-overlapping file order.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from ..algorithms import algorithms_from_flags
from ..blobinfo import BlobFeatures, BlobInfo, check_features, decode_blob_id
from ..bootstrap import Entry, align, check_name, check_range, unpack
from ..errors import FormatError, NotFound, Unsupported
from ..inode import ChunkRef, Ino, Inode
from ..records import Buffer
from . import layout as L
from .merkle import verify_tree

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_RECORD_CACHE: Final = 16384  # decoded records kept; a few MiB at most
_VALID_TYPES: Final = frozenset({stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR,
                                 stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})


@dataclass(frozen=True, slots=True)
class InodeRecord:
    """A validated inode record and where its variable parts live."""

    index: int  # inode index (table slot + 1)
    offset: int  # byte offset of the 128-byte header
    head: L.InodeV5  # the fixed header
    name: bytes  # entry name ("/" for the root)
    symlink_offset: int  # byte offset of the symlink target
    xattr_offset: int  # byte offset of the xattr table's u64 size; -1 if none
    chunks_offset: int  # byte offset of the first chunk record


class V5Bootstrap:
    """A validated RAFS v5 bootstrap over a buffer (see the module docstring)."""

    version = 5

    def __init__(self, buf: Buffer) -> None:
        self._buf = memoryview(buf).cast("B")
        self._len = len(self._buf)
        sb = unpack(L.SuperBlockV5, self._buf, 0, "v5 superblock")
        self._sb = sb
        self.compressor, self.digester = algorithms_from_flags(sb.flags, legacy_defaults=True)
        self.chunk_size = sb.chunk_size
        self.root_ino = Ino(L.ROOT_INDEX)
        self.inode_count = sb.inodes_count
        self._check_tables()
        self.blobs = self._read_blobs()
        self.prefetch_inos = self._read_prefetch()
        self.record = lru_cache(maxsize=_RECORD_CACHE)(self._load_record)
        self._inode = lru_cache(maxsize=_RECORD_CACHE)(self._make_inode)
        root = self.record(L.ROOT_INDEX)
        if not stat.S_ISDIR(root.head.mode) or root.head.ino != L.ROOT_INDEX:
            raise FormatError("v5: inode index 1 is not the root directory")

    # -- tables --------------------------------------------------------------------------

    def _check_tables(self) -> None:
        sb = self._sb
        tables = [("inode table", sb.inode_table_offset, 4 * sb.inode_table_entries),
                  ("prefetch table", sb.prefetch_table_offset, 4 * sb.prefetch_table_entries),
                  ("blob table", sb.blob_table_offset, sb.blob_table_size),
                  ("extended blob table", sb.ext_blob_table_offset,
                   L.ExtBlobEntryV5.SIZE * sb.ext_blob_table_entries)]
        for what, offset, size in tables:
            if size == 0:
                continue
            if offset % L.ALIGNMENT or offset < L.SUPERBLOCK_SIZE:
                raise FormatError(f"v5 {what}: misplaced at offset {offset}")
            check_range(self._len, offset, size, f"v5 {what}")
        if sb.inode_table_entries == 0:
            raise FormatError("v5: empty inode table")
        if sb.inodes_count > sb.inode_table_entries:
            raise FormatError(f"v5: {sb.inodes_count} inodes but "
                              f"{sb.inode_table_entries} table slots")

    def _read_blobs(self) -> tuple[BlobInfo, ...]:
        sb = self._sb
        pos, end = sb.blob_table_offset, sb.blob_table_offset + sb.blob_table_size
        entries: list[tuple[int, int, str]] = []
        while end - pos >= 9:  # two u32 and at least one id byte
            ra_offset, ra_size = struct.unpack_from("<II", self._buf, pos)
            stop = bytes(self._buf[pos + 8:end]).find(b"\0")
            id_end = end if stop < 0 else pos + 8 + stop
            where = f"v5 blob table entry {len(entries)} at offset {pos}"
            entries.append((ra_offset, ra_size, decode_blob_id(bytes(self._buf[pos + 8:id_end]),
                                                               where)))
            pos = id_end + 1
        ext_count = sb.ext_blob_table_entries
        if ext_count not in (0, len(entries)):
            raise FormatError(f"v5: {len(entries)} blobs but {ext_count} extended entries")
        return tuple(self._blob_info(i, *entry, has_ext=ext_count > 0)
                     for i, entry in enumerate(entries))

    def _blob_info(self, index: int, ra_offset: int, ra_size: int, blob_id: str,
                   has_ext: bool) -> BlobInfo:
        chunk_count = compressed = uncompressed = None
        features = BlobFeatures(0)
        if has_ext:
            offset = self._sb.ext_blob_table_offset + index * L.ExtBlobEntryV5.SIZE
            ext = unpack(L.ExtBlobEntryV5, self._buf, offset, f"v5 extended blob entry {index}")
            features = check_features(ext.features, f"v5 blob {index}")
            if features & BlobFeatures.V5_NO_EXT_BLOB_TABLE:
                raise FormatError(f"v5 blob {index}: internal feature bit on disk")
            chunk_count = ext.chunk_count
            compressed, uncompressed = ext.compressed_size, ext.uncompressed_size
        return BlobInfo(index=index, blob_id=blob_id, compressor=self.compressor,
                        digester=self.digester, chunk_size=self.chunk_size,
                        chunk_count=chunk_count, compressed_size=compressed,
                        uncompressed_size=uncompressed, features=features, meta=None,
                        toc_size=0, toc_digest=None, readahead_offset=ra_offset,
                        readahead_size=ra_size)

    def _read_prefetch(self) -> tuple[Ino, ...]:
        sb = self._sb
        inos: list[Ino] = []
        for i in range(sb.prefetch_table_entries):
            (ino,) = _U32.unpack_from(self._buf, sb.prefetch_table_offset + 4 * i)
            if ino == 0:
                break
            if ino > sb.inode_table_entries:
                raise FormatError(f"v5 prefetch table entry {i}: inode {ino} out of range")
            inos.append(Ino(ino))
        return tuple(inos)

    # -- records -------------------------------------------------------------------------

    def _load_record(self, index: int) -> InodeRecord:
        sb = self._sb
        if not 1 <= index <= sb.inode_table_entries:
            raise NotFound(f"v5: no inode index {index}")
        (value,) = _U32.unpack_from(self._buf, sb.inode_table_offset + 4 * (index - 1))
        offset = value << 3
        if offset <= L.SUPERBLOCK_SIZE or value >= L.MAX_INODE_TABLE_VALUE:
            raise FormatError(f"v5 inode table slot {index - 1}: bad value {value:#x}")
        where = f"v5 inode index {index}"
        head = unpack(L.InodeV5, self._buf, offset, where)
        if stat.S_IFMT(head.mode) not in _VALID_TYPES:
            raise FormatError(f"{where} at offset {offset}: bad mode {head.mode:#o}")
        pos = offset + L.InodeV5.SIZE
        check_range(self._len, pos, head.name_size, f"{where} name")
        name = bytes(self._buf[pos:pos + head.name_size])
        pos += align(head.name_size, L.ALIGNMENT)
        symlink_offset = pos
        if stat.S_ISLNK(head.mode) != (head.symlink_size > 0):
            raise FormatError(f"{where} at offset {offset}: symlink size {head.symlink_size} "
                              f"for mode {head.mode:#o}")
        check_range(self._len, pos, head.symlink_size, f"{where} symlink target")
        pos += align(head.symlink_size, L.ALIGNMENT)
        xattr_offset = -1
        if head.flags & L.INODE_XATTR:
            xattr_offset = pos
            pos += self._xattr_table_size(pos, where)
        record = InodeRecord(index, offset, head, name, symlink_offset, xattr_offset, pos)
        self._check_children(record, where)
        return record

    def _xattr_table_size(self, pos: int, where: str) -> int:
        check_range(self._len, pos, 8, f"{where} xattr table")
        (total,) = _U64.unpack_from(self._buf, pos)
        check_range(self._len, pos + 8, total, f"{where} xattr table")
        return align(8 + total, L.ALIGNMENT)

    def _check_children(self, record: InodeRecord, where: str) -> None:
        head = record.head
        if stat.S_ISREG(head.mode):
            check_range(self._len, record.chunks_offset, head.child_count * L.ChunkRecord.SIZE,
                        f"{where} chunk records")
        elif stat.S_ISDIR(head.mode) and head.child_count:
            first, last = head.child_index, head.child_index + head.child_count - 1
            if first <= record.index or last > self._sb.inode_table_entries:
                raise FormatError(f"{where} at offset {record.offset}: children "
                                  f"{first}..{last} out of range")

    def _canonical(self, ino: int) -> InodeRecord:
        record = self.record(ino)
        if record.head.ino != ino:
            raise NotFound(f"v5: inode index {ino} is a link to inode {record.head.ino}")
        return record

    def inode(self, ino: int) -> Inode:
        return self._inode(ino)

    def _make_inode(self, ino: int) -> Inode:
        head = self._canonical(ino).head
        parent = Ino(head.parent) if ino != L.ROOT_INDEX else self.root_ino
        return Inode(ino=Ino(ino), mode=head.mode, uid=head.uid, gid=head.gid, size=head.size,
                     nlink=head.nlink, rdev=head.rdev, mtime=head.mtime,
                     mtime_nsec=head.mtime_nsec, blocks=head.blocks, parent=parent,
                     has_xattrs=bool(head.flags & L.INODE_XATTR))

    # -- directories ---------------------------------------------------------------------

    def _child(self, directory: Inode, position: int) -> tuple[bytes, Ino]:
        index = self.record(directory.ino).head.child_index + position
        record = self.record(index)
        check_name(record.name, f"v5 inode index {index}")
        if record.head.ino == 0 or record.head.ino > self._sb.inode_table_entries:
            raise FormatError(f"v5 inode index {index}: i_ino {record.head.ino} out of range")
        return record.name, Ino(record.head.ino)

    def lookup(self, directory: Inode, name: bytes) -> Ino | None:
        if name == b".":
            return directory.ino
        if name == b"..":
            return self._parent(directory)
        lo, hi = 0, self.record(directory.ino).head.child_count
        while lo < hi:  # children are sorted by name bytes (§3.10)
            mid = (lo + hi) // 2
            child_name, ino = self._child(directory, mid)
            if child_name == name:
                return ino
            if child_name < name:
                lo = mid + 1
            else:
                hi = mid
        return None

    def _parent(self, directory: Inode) -> Ino:
        parent = directory.parent if directory.parent is not None else self.root_ino
        if not 1 <= parent <= self._sb.inode_table_entries:
            raise FormatError(f"v5 inode {directory.ino}: parent {parent} out of range")
        return parent

    def entries(self, directory: Inode, cookie: int) -> Iterator[Entry]:
        if cookie <= 0:
            yield 1, b".", directory.ino
        if cookie <= 1:
            yield 2, b"..", self._parent(directory)
        count = self.record(directory.ino).head.child_count
        for position in range(max(cookie - 2, 0), count):
            name, ino = self._child(directory, position)
            yield position + 3, name, ino

    # -- symlinks and xattrs -------------------------------------------------------------

    def readlink(self, inode: Inode) -> bytes:
        return self.symlink_target(self._canonical(inode.ino))

    def xattrs(self, inode: Inode) -> dict[bytes, bytes]:
        record = self._canonical(inode.ino)
        if record.xattr_offset < 0:
            return {}
        (total,) = _U64.unpack_from(self._buf, record.xattr_offset)
        start = record.xattr_offset + 8
        return _parse_xattr_pairs(bytes(self._buf[start:start + total]),
                                  f"v5 inode {inode.ino} xattrs at offset {start}")

    @property
    def index_count(self) -> int:
        """Inode table slots: inode indexes run 1..index_count."""
        return self._sb.inode_table_entries

    def symlink_target(self, record: InodeRecord) -> bytes:
        start = record.symlink_offset
        return bytes(self._buf[start:start + record.head.symlink_size])

    def verify_digests(self) -> bytes:
        """Check every record's merkle digest (§3.11); returns the root's."""
        return verify_tree(self)

    def attach_source(self, blob_index: int, source: object) -> None:
        raise Unsupported("v5 chunk records are complete; no blob meta needed")

    # -- chunks --------------------------------------------------------------------------

    def chunk(self, record: InodeRecord, i: int) -> L.ChunkRecord:
        offset = record.chunks_offset + i * L.ChunkRecord.SIZE
        chunk = unpack(L.ChunkRecord, self._buf, offset,
                       f"v5 inode {record.head.ino} chunk {i}")
        if chunk.blob_index >= len(self.blobs):
            raise FormatError(f"v5 inode {record.head.ino} chunk {i} at offset {offset}: "
                              f"blob index {chunk.blob_index} of {len(self.blobs)}")
        return chunk

    def _first_chunk(self, record: InodeRecord, start: int) -> int:
        """Position of the first chunk that may overlap `start`."""
        if not record.head.flags & L.INODE_HAS_HOLE:
            return min(start // self.chunk_size, record.head.child_count)
        lo, hi = 0, record.head.child_count
        while lo < hi:  # last chunk with file_offset <= start
            mid = (lo + hi) // 2
            if self.chunk(record, mid).file_offset <= start:
                lo = mid + 1
            else:
                hi = mid
        return max(lo - 1, 0)

    def chunks(self, inode: Inode, start: int, end: int) -> list[ChunkRef]:
        record = self._canonical(inode.ino)
        refs: list[ChunkRef] = []
        prev_end = 0
        for i in range(self._first_chunk(record, start), record.head.child_count):
            chunk = self.chunk(record, i)
            if chunk.file_offset >= end:
                break
            self._check_chunk_place(record, i, chunk, prev_end)
            prev_end = chunk.file_offset + chunk.uncompressed_size
            if prev_end > start:
                refs.append(_chunk_ref(chunk, f"v5 inode {inode.ino} chunk {i}"))
        return refs

    def _check_chunk_place(self, record: InodeRecord, i: int, chunk: L.ChunkRecord,
                           prev_end: int) -> None:
        has_hole = record.head.flags & L.INODE_HAS_HOLE
        end = chunk.file_offset + chunk.uncompressed_size
        if (chunk.file_offset < prev_end or end > record.head.size
                or chunk.uncompressed_size > self.chunk_size
                or (not has_hole and chunk.file_offset != i * self.chunk_size)):
            raise FormatError(f"v5 inode {record.head.ino} chunk {i}: file range "
                              f"{chunk.file_offset}..{end} misplaced")


def _chunk_ref(chunk: L.ChunkRecord, where: str) -> ChunkRef:
    if chunk.flags & (L.CHUNK_ENCRYPTED | L.CHUNK_BATCH):
        raise Unsupported(f"{where}: encrypted or batch chunk (flags {chunk.flags:#x})")
    if chunk.flags & L.CHUNK_HOLE:
        return ChunkRef.hole(chunk.file_offset, chunk.uncompressed_size)
    return ChunkRef(file_offset=chunk.file_offset, uncompressed_size=chunk.uncompressed_size,
                    blob_index=chunk.blob_index, compressed_offset=chunk.compressed_offset,
                    compressed_size=chunk.compressed_size,
                    uncompressed_offset=chunk.uncompressed_offset, digest=chunk.digest,
                    is_compressed=bool(chunk.flags & L.CHUNK_COMPRESSED),
                    chunk_index=chunk.index,
                    crc32=chunk.crc32 if chunk.flags & L.CHUNK_HAS_CRC32 else None)


def _parse_xattr_pairs(data: bytes, where: str) -> dict[bytes, bytes]:
    """Pairs of (u32 length, name NUL value), back to back (§3.9)."""
    result: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise FormatError(f"{where}: truncated pair at {pos}")
        (size,) = _U32.unpack_from(data, pos)
        pair = data[pos + 4:pos + 4 + size]
        name, sep, value = pair.partition(b"\0")
        if len(pair) != size or not sep or not name.startswith(L.XATTR_PREFIXES):
            raise FormatError(f"{where}: bad pair at {pos}")
        result[name] = value
        pos += 4 + size
    return result
