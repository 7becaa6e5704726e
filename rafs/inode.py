"""The decoded, immutable view of one inode, shared by RAFS v5 and v6.

Readers build an `Inode` from the on-disk record after validating it; it carries only
what a filesystem needs for attributes. Where data, names or xattrs live stays private to
the version-specific reader. `ino` is the number the image is addressed by: the v5 `i_ino`
(hardlinks share the first link's) or the v6 nid (hardlinks share one nid).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import NewType

Ino = NewType("Ino", int)


@dataclass(frozen=True, slots=True)
class Inode:
    """Attributes of one inode, as stored in the bootstrap."""

    ino: Ino  # number the image addresses this inode by (v5 i_ino, v6 nid)
    mode: int  # full st_mode: type bits and permissions
    uid: int  # owner user id
    gid: int  # owner group id
    size: int  # bytes: file size, symlink target length or directory data size
    nlink: int  # hard link count
    rdev: int  # device number of char/block devices (kernel 32-bit encoding), else 0
    mtime: int  # seconds since the epoch
    mtime_nsec: int  # nanoseconds part of mtime
    blocks: int  # 512-byte units
    parent: Ino | None  # parent directory where the format records it (v5), else None
    has_xattrs: bool  # the inode carries an xattr area

    @property
    def file_type(self) -> int:
        """The S_IFMT bits of `mode`."""
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_special(self) -> bool:
        """A char/block device, fifo or socket: no data, maybe an rdev."""
        return not (self.is_dir or self.is_reg or self.is_symlink)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One piece of a regular file: a chunk stored in a blob, or a hole (zero fill).

    `file_offset`/`uncompressed_size` place the chunk's whole content in the file, so a
    request for part of it must slice the decoded bytes (see `plan.slice_range`).
    """

    file_offset: int  # bytes: where the chunk's first byte sits in the file
    uncompressed_size: int  # bytes of file content in the chunk (hole: its length)
    blob_index: int | None  # index into Image.blobs; None for a hole
    compressed_offset: int  # bytes: position of the stored chunk in the blob file
    compressed_size: int  # bytes stored in the blob file
    uncompressed_offset: int  # bytes: position in the blob's uncompressed address space
    digest: bytes | None  # H(uncompressed bytes); None if the image does not record it
    is_compressed: bool  # stored bytes must go through the blob's decompressor
    chunk_index: int  # ordinal of the chunk inside its blob (ci index)
    crc32: int | None = None  # CRC-32C of the uncompressed bytes when recorded

    @property
    def is_hole(self) -> bool:
        return self.blob_index is None

    @property
    def file_end(self) -> int:
        return self.file_offset + self.uncompressed_size

    @classmethod
    def hole(cls, file_offset: int, size: int) -> ChunkRef:
        """A run of `size` zero bytes at `file_offset` that no blob stores."""
        return cls(file_offset, size, None, 0, 0, 0, None, False, 0)
