"""RAFS v6 on-disk records and constants (rafs-format §4).

A v6 bootstrap is an EROFS image: the EROFS superblock at byte 1024, the Nydus extended
superblock right after it, a device table (one slot per data blob), the Nydus blob table,
then the EROFS meta area holding inodes (32-byte slots addressed by nid), inline xattrs,
inline data tails and directory blocks, and finally the chunk table of 80-byte chunk records
(`rafs.v5.layout.ChunkRecord`). File data lives in the blobs ("extra devices").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..errors import FormatError, Unsupported
from ..records import Record

EROFS_MAGIC: Final = 0xE0F5_E1E2  # §4.2
SUPERBLOCK_OFFSET: Final = 1024  # bytes from file start
EXT_SUPERBLOCK_OFFSET: Final = 1152  # right after the 128-byte EROFS superblock
FEATURE_COMPAT_RAFS_V6: Final = 0x4000_0000  # marks a Nydus bootstrap
FEATURE_COMPAT_SB_CHKSUM: Final = 0x1  # never set by Nydus; unsupported here
FEATURE_INCOMPAT_CHUNKED_FILE: Final = 0x4
FEATURE_INCOMPAT_DEVICE_TABLE: Final = 0x8
BLOCK_SIZE_BITS: Final = 12  # 4096-byte blocks (512 only in tarfs mode, unsupported)
SLOT_SIZE: Final = 32  # nid unit: inodes are 32-byte aligned (§4.7)
MAX_SYMLINK: Final = 4096  # readers refuse longer targets (§4.11)
NULL_ADDR: Final = 0xFFFF_FFFF  # EROFS "no block": a hole in a chunk-based file

# i_format bits (§4.7)
FORMAT_EXTENDED: Final = 0x1
LAYOUT_FLAT_PLAIN: Final = 0
LAYOUT_FLAT_INLINE: Final = 2
LAYOUT_CHUNK_BASED: Final = 4

# chunk format word, low 16 bits of i_u for chunk-based inodes (§4.9.3)
CHUNK_FORMAT_INDEXES: Final = 0x20  # 8-byte chunk index records
CHUNK_FORMAT_BLKBITS_MASK: Final = 0x1F  # log2(inode chunk size) - 12

# xattr name_index -> name prefix (§4.8)
XATTR_PREFIXES: Final = {1: b"user.", 2: b"system.posix_acl_access",
                         3: b"system.posix_acl_default", 4: b"trusted.", 6: b"security."}

# dirent file types (§4.10)
FT_UNKNOWN: Final = 0
FT_MAX: Final = 7


@dataclass(frozen=True, slots=True)
class ErofsSuperBlock(Record, fmt="<IIIBBHQQIIII16s16sIHHH38x"):
    """The 128-byte EROFS superblock at byte 1024 (§4.2)."""

    magic: int  # EROFS_MAGIC
    checksum: int  # crc32c of the superblock; Nydus writes 0
    feature_compat: int  # must include FEATURE_COMPAT_RAFS_V6
    blkszbits: int  # log2(block size); 12
    extslots: int  # extra superblock slots; 0
    root_nid: int  # nid of the root directory
    inos: int  # number of tree nodes (informational)
    build_time: int  # seconds; mtime of compact inodes
    build_time_nsec: int  # nanoseconds part of build_time
    blocks: int  # total blocks of all devices (informational)
    meta_blkaddr: int  # block number of nid 0
    xattr_blkaddr: int  # shared xattr area; unused by RAFS
    uuid: bytes  # 16 bytes, zero
    volume_name: bytes  # 16 bytes, zero
    feature_incompat: int  # CHUNKED_FILE | DEVICE_TABLE
    union_field: int  # lz4 max distance / available compr algs; 0
    extra_devices: int  # number of data blobs
    devt_slotoff: int  # device table offset in units of 128 bytes

    def validate(self) -> None:
        if self.magic != EROFS_MAGIC:
            raise FormatError(f"EROFS superblock: magic {self.magic:#x}")
        if not self.feature_compat & FEATURE_COMPAT_RAFS_V6:
            raise Unsupported("EROFS image without the RAFS v6 marker")
        if self.blkszbits != BLOCK_SIZE_BITS:
            raise Unsupported(f"EROFS superblock: block size 2^{self.blkszbits} (tarfs?)")
        known = FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE
        if self.feature_incompat & ~known:
            raise Unsupported(f"EROFS incompatible features {self.feature_incompat:#x}")
        if self.extslots:
            raise Unsupported(f"EROFS superblock: {self.extslots} extra slots")


@dataclass(frozen=True, slots=True)
class ExtSuperBlock(Record, fmt="<QQIIQQQII200x"):
    """The 256-byte RAFS v6 extended superblock at byte 1152 (§4.3)."""

    flags: int  # RafsFlags bits (§2.4)
    blob_table_offset: int  # bytes from file start, 4 KiB aligned
    blob_table_size: int  # bytes; 256 per blob
    chunk_size: int  # bytes; power of two, 4 KiB .. 16 MiB
    chunk_table_offset: int  # bytes from file start, 4 KiB aligned
    chunk_table_size: int  # bytes; 80 per chunk record
    prefetch_table_offset: int  # bytes from file start; 0 if none
    prefetch_table_size: int  # bytes; 4 per nid
    padding: int  # 0


@dataclass(frozen=True, slots=True)
class DeviceSlot(Record, fmt="<64sII56x"):
    """One 128-byte EROFS device table slot; slot i is blob index i (§4.4)."""

    blob_id: bytes  # 64 ASCII bytes
    blocks: int  # 4 KiB blocks of the blob's uncompressed address space
    mapped_blkaddr: int  # start block when bootstrap and blobs form one block device


@dataclass(frozen=True, slots=True)
class BlobTableEntryV6(Record, fmt="<64sIIIIIIQQIIQQQ32s32sQQI36x"):
    """One 256-byte entry of the v6 blob table (§4.5)."""

    blob_id: bytes  # ASCII, NUL padded, 64 bytes
    blob_index: int  # equals the entry's position
    chunk_size: int  # bytes; equals the extended superblock's
    chunk_count: int  # distinct chunks in the blob
    compressor: int  # Compressor id of chunk data
    digester: int  # Digester id of chunk digests
    features: int  # BlobFeatures bits
    compressed_size: int  # bytes of the blob file (older builders: chunk data only)
    uncompressed_size: int  # bytes of the uncompressed address space
    blob_toc_size: int  # bytes of ToC entries + tar header; 0 without ToC
    ci_compressor: int  # Compressor id of the chunk-info array
    ci_offset: int  # byte offset of the (compressed) chunk-info array in the blob
    ci_compressed_size: int  # bytes
    ci_uncompressed_size: int  # bytes
    blob_toc_digest: bytes  # sha256 of ToC entries + ToC tar header
    blob_meta_digest: bytes  # separate meta blob id (or cipher key)
    blob_meta_size: int  # bytes of the separate meta blob (or IV bytes 0..8)
    cipher_iv: int  # IV bytes 8..16
    cipher_algo: int  # cipher id (§2.3)


@dataclass(frozen=True, slots=True)
class CompactInode(Record, fmt="<HHHHI4xIIHH4x"):
    """The 32-byte EROFS compact inode (§4.7)."""

    format: int  # bit 0: 0 = compact; bits 1-3: data layout
    xattr_icount: int  # inline xattr area size code (§4.8)
    mode: int  # full st_mode
    nlink: int  # hard link count
    size: int  # bytes
    i_u: int  # block address, chunk format or rdev (by file type and layout)
    ino: int  # builder's sequential number (not the nid)
    uid: int  # owner user id
    gid: int  # owner group id


@dataclass(frozen=True, slots=True)
class ExtendedInode(Record, fmt="<HHH2xQIIIIQII16x"):
    """The 64-byte EROFS extended inode (§4.7)."""

    format: int  # bit 0: 1 = extended; bits 1-3: data layout
    xattr_icount: int  # inline xattr area size code (§4.8)
    mode: int  # full st_mode
    size: int  # bytes
    i_u: int  # block address, chunk format or rdev (by file type and layout)
    ino: int  # builder's sequential number (not the nid)
    uid: int  # owner user id
    gid: int  # owner group id
    mtime: int  # seconds since the epoch
    mtime_nsec: int  # nanoseconds part of mtime
    nlink: int  # hard link count


@dataclass(frozen=True, slots=True)
class Dirent(Record, fmt="<QHBx"):
    """A 12-byte EROFS directory entry (§4.10)."""

    nid: int  # target inode
    nameoff: int  # byte offset of the name inside the directory block
    file_type: int  # FT_* value


@dataclass(frozen=True, slots=True)
class ChunkIndex(Record, fmt="<HHI"):
    """An 8-byte chunk index record of a chunk-based inode (§4.9.3)."""

    lo: int  # bits 0-15 of the chunk-info index
    hi: int  # low byte: blob index + 1; high byte: bits 16-23 of the chunk-info index
    blkaddr: int  # uncompressed offset / 4096 inside the blob; NULL_ADDR = hole

    @property
    def device(self) -> int:
        """EROFS device id = blob index + 1 (0 is invalid)."""
        return self.hi & 0xFF

    @property
    def ci_index(self) -> int:
        return ((self.hi >> 8) << 16) | self.lo


@dataclass(frozen=True, slots=True)
class XattrHeader(Record, fmt="<IB7x"):
    """The 12-byte header of an inline xattr area (§4.8)."""

    name_filter: int  # reserved (bloom filter in newer EROFS); ignored
    shared_count: int  # shared xattr ids that follow; RAFS writes 0


@dataclass(frozen=True, slots=True)
class XattrEntry(Record, fmt="<BBH"):
    """The 4-byte head of one inline xattr entry (§4.8)."""

    name_len: int  # bytes of the name suffix
    name_index: int  # prefix id (XATTR_PREFIXES)
    value_size: int  # bytes of the value
