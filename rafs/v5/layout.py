"""RAFS v5 on-disk records and constants (rafs-format §3).

Everything in a v5 bootstrap is little-endian and 8-byte aligned. The superblock (8192
bytes) records where the inode table, prefetch table, blob table and extended blob table
live; the inode table maps inode index i (slot i-1) to a record offset divided by 8. A record
is a 128-byte header, the name, an optional symlink target, an optional xattr table and, for
regular files, `i_child_count` 80-byte chunk records (the same record as the v6 chunk table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..errors import FormatError
from ..records import Record

MAGIC: Final = 0x5241_4653  # "RAFS" as a little-endian u32 (§1)
VERSION: Final = 0x500  # v5; 0x400 (v4) is defined upstream but refused by its loader
SUPERBLOCK_SIZE: Final = 8192  # §3.2
ALIGNMENT: Final = 8  # every table, record, name and symlink (§3.1)
ROOT_INDEX: Final = 1  # inode index (and i_ino) of the root directory (§3.3)
MAX_INODE_TABLE_VALUE: Final = 1 << 29  # offset >> 3 must stay below this (§3.3)
MIN_CHUNK_SIZE: Final = 0x1000  # 4 KiB (§3.2)
MAX_CHUNK_SIZE: Final = 0x100_0000  # 16 MiB

# v5 inode flags (u64 i_flags), §2.7
INODE_SYMLINK: Final = 0x1
INODE_HARDLINK: Final = 0x2
INODE_XATTR: Final = 0x4
INODE_HAS_HOLE: Final = 0x8
INODE_KNOWN_FLAGS: Final = 0xF

# chunk flags (u32), §2.6
CHUNK_COMPRESSED: Final = 0x01
CHUNK_HOLE: Final = 0x02
CHUNK_ENCRYPTED: Final = 0x04
CHUNK_BATCH: Final = 0x08
CHUNK_HAS_CRC32: Final = 0x10
CHUNK_KNOWN_FLAGS: Final = 0x1F

# xattr names a v5 writer accepts (§3.9)
XATTR_PREFIXES: Final = (b"user.", b"security.", b"trusted.", b"system.posix_acl_access",
                         b"system.posix_acl_default")


def is_power_of_two_chunk(size: int) -> bool:
    """Chunk sizes are powers of two between 4 KiB and 16 MiB (§3.2, §4.3)."""
    return MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE and size & (size - 1) == 0


@dataclass(frozen=True, slots=True)
class SuperBlockV5(Record, fmt="<IIIIQQQQQIIIIQ8112x"):
    """The 8192-byte v5 superblock at offset 0 (§3.2)."""

    magic: int  # MAGIC
    version: int  # VERSION
    sb_size: int  # bytes; always 8192
    chunk_size: int  # bytes; power of two, 4 KiB .. 16 MiB
    flags: int  # RafsFlags bits (§2.4)
    inodes_count: int  # distinct inodes; informational, not validated strictly
    inode_table_offset: int  # bytes from file start
    prefetch_table_offset: int  # bytes from file start
    blob_table_offset: int  # bytes from file start
    inode_table_entries: int  # u32 slots (= highest inode index)
    prefetch_table_entries: int  # valid u32 entries (padding excluded)
    blob_table_size: int  # bytes, padded to 8
    ext_blob_table_entries: int  # 64-byte entries; 0 when the table is absent
    ext_blob_table_offset: int  # bytes from file start

    def validate(self) -> None:
        if self.magic != MAGIC or self.version != VERSION:
            raise FormatError(f"v5 superblock: magic {self.magic:#x} version {self.version:#x}")
        if self.sb_size != SUPERBLOCK_SIZE:
            raise FormatError(f"v5 superblock: sb_size {self.sb_size} != {SUPERBLOCK_SIZE}")
        if not is_power_of_two_chunk(self.chunk_size):
            raise FormatError(f"v5 superblock: bad chunk_size {self.chunk_size:#x}")


@dataclass(frozen=True, slots=True)
class ExtBlobEntryV5(Record, fmt="<IIQQ40x"):
    """One 64-byte entry of the v5 extended blob table (§3.6); entry i is blob index i."""

    chunk_count: int  # distinct chunks stored in the blob
    features: int  # BlobFeatures bits (§2.5)
    uncompressed_size: int  # bytes of the fully decompressed blob
    compressed_size: int  # bytes of the blob file


@dataclass(frozen=True, slots=True)
class InodeV5(Record, fmt="<32sQQIIIIQQQIIIHHIIQ8x"):
    """The fixed 128-byte header of a v5 inode record (§3.7)."""

    digest: bytes  # merkle digest of the subtree (§3.11), 32 bytes
    parent: int  # i_ino of the parent directory; 0 for the root
    ino: int  # POSIX inode number; hardlinks share the first link's
    uid: int  # owner user id
    gid: int  # owner group id
    projid: int  # project id; builders write 0
    mode: int  # full st_mode (type bits + permissions)
    size: int  # bytes: file size, symlink target length, or directory size
    blocks: int  # 512-byte units
    flags: int  # INODE_* bits (§2.7)
    nlink: int  # hard link count
    child_index: int  # directories: inode index of the first child
    child_count: int  # directories: children; regular files: chunk records
    name_size: int  # bytes of the name (exact, not padded)
    symlink_size: int  # bytes of the symlink target (exact)
    rdev: int  # device number of char/block devices
    mtime_nsec: int  # nanoseconds part of mtime
    mtime: int  # seconds since the epoch

    def validate(self) -> None:
        if self.flags & ~INODE_KNOWN_FLAGS:
            raise FormatError(f"unknown v5 inode flags {self.flags:#x}")
        if self.name_size == 0:
            raise FormatError("v5 inode with an empty name")


@dataclass(frozen=True, slots=True)
class ChunkRecord(Record, fmt="<32sIIIIQQQII"):
    """The 80-byte chunk record of v5 inodes and of the v6 chunk table (§3.8)."""

    digest: bytes  # H(uncompressed chunk bytes), 32 bytes; the chunk id
    blob_index: int  # index into the blob table
    flags: int  # CHUNK_* bits (§2.6)
    compressed_size: int  # bytes occupied in the blob file
    uncompressed_size: int  # bytes of file data in this chunk
    compressed_offset: int  # byte offset of the chunk in the blob file
    uncompressed_offset: int  # byte offset in the blob's uncompressed address space
    file_offset: int  # byte offset inside the file (v5 only; 0 in the v6 chunk table)
    index: int  # ordinal of the chunk inside its blob (the v6 ci index)
    crc32: int  # CRC-32C of the uncompressed bytes, valid with CHUNK_HAS_CRC32

    def validate(self) -> None:
        if self.flags & ~CHUNK_KNOWN_FLAGS:
            raise FormatError(f"chunk record: unknown flags {self.flags:#x}")
        if not 0 < self.uncompressed_size <= MAX_CHUNK_SIZE:
            raise FormatError(f"chunk record: uncompressed size {self.uncompressed_size}")
        if self.compressed_size > MAX_CHUNK_SIZE + MAX_CHUNK_SIZE // 2:
            raise FormatError(f"chunk record: compressed size {self.compressed_size}")


@dataclass(frozen=True, slots=True)
class BlobEntryHeadV5(Record, fmt="<II"):
    """The fixed head of a v5 blob table entry; the blob id and a NUL follow (§3.5)."""

    readahead_offset: int  # bytes: prefetch hint, start in the blob
    readahead_size: int  # bytes: prefetch hint, length


@dataclass(frozen=True, slots=True)
class XattrTableHeadV5(Record, fmt="<Q"):
    """The u64 that opens a v5 xattr table (§3.9)."""

    size: int  # bytes of pair data that follow (padding excluded)


@dataclass(frozen=True, slots=True)
class XattrPairHeadV5(Record, fmt="<I"):
    """The u32 before each v5 xattr pair `name NUL value` (§3.9)."""

    pair_len: int  # bytes: len(name) + 1 + len(value)
