"""The internal interface between `Image` and the version-specific bootstrap readers.

`rafs.v5.bootstrap.V5Bootstrap` and `rafs.v6.bootstrap.V6Bootstrap` implement `Bootstrap`;
`Image` is the only caller. The readers validate what they decode and raise `RafsError`;
`Image` adds what is the same for both versions (type checks, holes, range clamping), so
no code outside `rafs/v5` and `rafs/v6` looks at the format version.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

from .algorithms import Compressor, Digester
from .blobinfo import BlobInfo
from .errors import FormatError, RafsError
from .inode import ChunkRef, Ino, Inode
from .records import Buffer, Record, RecordError
from .v5.layout import ChunkRecord

R = TypeVar("R", bound=Record)

# A directory entry as readers yield it: (cookie of the next entry, name, inode number).
Entry = tuple[int, bytes, Ino]


class ChunkSource(Protocol):
    """Full chunk records of one blob by chunk-info index (see rafs.blobmeta.BlobMeta)."""

    def chunk(self, ci_index: int) -> ChunkRecord:
        ...


class Bootstrap(Protocol):
    """A parsed, validated bootstrap; each method decodes lazily from the buffer."""

    version: int
    root_ino: Ino
    inode_count: int
    chunk_size: int
    compressor: Compressor
    digester: Digester
    blobs: tuple[BlobInfo, ...]
    prefetch_inos: tuple[Ino, ...]

    def inode(self, ino: int) -> Inode:
        """The inode numbered `ino`; NotFound if there is none."""
        ...

    def lookup(self, directory: Inode, name: bytes) -> Ino | None:
        """The entry `name` (including "." and "..") of a directory, or None."""
        ...

    def entries(self, directory: Inode, cookie: int) -> Iterator[Entry]:
        """Entries from `cookie` (0 = first) on, "." and ".." included; O(1) to resume."""
        ...

    def readlink(self, inode: Inode) -> bytes:
        """The target of a symlink."""
        ...

    def xattrs(self, inode: Inode) -> dict[bytes, bytes]:
        """All extended attributes of an inode (full names)."""
        ...

    def verify_digests(self) -> bytes:
        """Recompute inode digests where the format has them; returns the root digest."""
        ...

    def attach_source(self, blob_index: int, source: ChunkSource) -> None:
        """Resolve chunk records of one blob through `source` (v6 blob meta)."""
        ...

    def chunks(self, inode: Inode, start: int, end: int) -> list[ChunkRef]:
        """Stored chunks (and explicit holes) overlapping [start, end), in file order."""
        ...


def unpack(cls: type[R], buf: Buffer, offset: int, what: str) -> R:
    """Decode and validate a record of untrusted bytes; any failure is a FormatError."""
    try:
        record = cls.unpack_from(buf, offset)
    except RecordError:
        raise FormatError(f"{what}: truncated at offset {offset}") from None
    try:
        record.validate()
    except RafsError as exc:
        raise type(exc)(f"{what} at offset {offset}: {exc}") from None
    return record


def check_range(buf_len: int, offset: int, size: int, what: str) -> None:
    """Raise FormatError unless [offset, offset + size) lies inside the buffer."""
    if offset < 0 or size < 0 or offset + size > buf_len:
        raise FormatError(f"{what}: bytes {offset}..{offset + size} outside the "
                          f"{buf_len}-byte bootstrap")


def check_name(name: bytes, where: str) -> None:
    """Directory entry names are non-empty and hold neither '/' nor NUL."""
    if not name or b"/" in name or b"\0" in name:
        raise FormatError(f"{where}: invalid entry name {name[:64]!r}")


def align(value: int, to: int) -> int:
    return (value + to - 1) // to * to
