"""`Image`: the version-neutral view of a RAFS bootstrap (v5 or v6) held in memory.

An Image is pure over a buffer (bytes, memoryview or mmap): it validates the superblock and
tables at construction and decodes inodes, directory blocks and chunk lists lazily, with
bounded caches, so opening an image of any size is cheap. Every public method raises only
`RafsError` subclasses: the readers validate before trusting, and decoding failures of the
standard library that slip through are translated at this boundary (and flagged as a bug by
the tests). `open_image` is the one helper that touches the file system.
"""

from __future__ import annotations

import functools
import mmap
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

from .algorithms import Compressor, Digester
from .blobinfo import BlobInfo
from .blobmeta import BlobMeta
from .bootstrap import Bootstrap
from .errors import FormatError, InvalidArgument, NotADirectory, RafsError
from .inode import ChunkRef, Ino, Inode
from .records import Buffer
from .v5 import layout as v5_layout
from .v5.bootstrap import V5Bootstrap
from .v6 import layout as v6_layout
from .v6.bootstrap import V6Bootstrap

P = ParamSpec("P")
T = TypeVar("T")

_UNEXPECTED: Final = (struct.error, ValueError, IndexError, OverflowError, KeyError, TypeError)
UNEXPECTED_PREFIX: Final = "undetected corruption"


def _translated(func: Callable[P, T]) -> Callable[P, T]:
    """Turn stray decoding errors into FormatError (the tests treat these as bugs)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except RafsError:
            raise
        except _UNEXPECTED as exc:
            raise FormatError(f"{UNEXPECTED_PREFIX}: {type(exc).__name__}: {exc}") from exc

    return wrapper


def detect_version(buf: Buffer) -> int:
    """5 or 6 for a RAFS bootstrap; FormatError for anything else (§1)."""
    view = memoryview(buf).cast("B")
    if len(view) >= 8 and struct.unpack_from("<II", view) == (v5_layout.MAGIC,
                                                              v5_layout.VERSION):
        return 5
    sb = v6_layout.SUPERBLOCK_OFFSET
    if len(view) >= sb + 4 and struct.unpack_from("<I", view, sb)[0] == v6_layout.EROFS_MAGIC:
        return 6
    raise FormatError("not a RAFS v5 or v6 bootstrap (no RAFS or EROFS magic)")


class Image:
    """A RAFS image: attributes, directories, symlinks, xattrs and chunk maps of files."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self._b = bootstrap

    @classmethod
    @_translated
    def from_bytes(cls, buf: Buffer) -> Image:
        """Parse and validate a bootstrap held in `buf` (not copied; keep it alive)."""
        if detect_version(buf) == 5:
            return cls(V5Bootstrap(buf))
        return cls(V6Bootstrap(buf))

    # -- image-wide facts ----------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._b.version

    @property
    def root_ino(self) -> Ino:
        return self._b.root_ino

    @property
    def inode_count(self) -> int:
        return self._b.inode_count

    @property
    def chunk_size(self) -> int:
        return self._b.chunk_size

    @property
    def compressor(self) -> Compressor:
        return self._b.compressor

    @property
    def digester(self) -> Digester:
        return self._b.digester

    @property
    def blobs(self) -> tuple[BlobInfo, ...]:
        return self._b.blobs

    @property
    def prefetch_inos(self) -> tuple[Ino, ...]:
        """Inodes to prefetch, in build order (v5: inode numbers, v6: nids)."""
        return self._b.prefetch_inos

    # -- inodes and directories ----------------------------------------------------------

    @_translated
    def inode(self, ino: int) -> Inode:
        """The inode numbered `ino`. Raises NotFound if the image has none."""
        return self._b.inode(ino)

    def _directory(self, ino: int) -> Inode:
        inode = self._b.inode(ino)
        if not inode.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return inode

    @_translated
    def lookup(self, parent: int, name: bytes) -> Inode | None:
        """The entry `name` of directory `parent` ("." and ".." included), or None."""
        ino = self._b.lookup(self._directory(parent), name)
        return None if ino is None else self._b.inode(ino)

    def readdir(self, ino: int, start_index: int = 0) -> Iterator[tuple[int, bytes, Inode]]:
        """Entries of a directory as (next_index, name, inode), "." and ".." included.

        Indexes are opaque cookies: pass an entry's `next_index` back to resume right after
        it (O(1), no rescan); 0 starts at the beginning.
        """
        directory = self.inode(ino)
        if not directory.is_dir:
            raise NotADirectory(f"inode {ino} is not a directory")
        return self._entries(directory, start_index)

    def _entries(self, directory: Inode, start: int) -> Iterator[tuple[int, bytes, Inode]]:
        entries = self._b.entries(directory, start)
        while True:
            try:
                next_index, name, child = next(entries)
            except StopIteration:
                return
            except RafsError:
                raise
            except _UNEXPECTED as exc:
                raise FormatError(f"{UNEXPECTED_PREFIX}: {type(exc).__name__}: {exc}") from exc
            yield next_index, name, self.inode(child)

    @_translated
    def readlink(self, ino: int) -> bytes:
        """The target of symlink `ino`; InvalidArgument for other inodes."""
        inode = self._b.inode(ino)
        if not inode.is_symlink:
            raise InvalidArgument(f"inode {ino} is not a symlink")
        return self._b.readlink(inode)

    @_translated
    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        """All extended attributes of `ino`, by full name (e.g. b"user.foo")."""
        inode = self._b.inode(ino)
        return self._b.xattrs(inode) if inode.has_xattrs else {}

    def getxattr(self, ino: int, name: bytes) -> bytes | None:
        return self.xattrs(ino).get(name)

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self.xattrs(ino))

    # -- file data -----------------------------------------------------------------------

    @_translated
    def file_chunks(self, ino: int, offset: int, size: int) -> list[ChunkRef]:
        """Chunks covering file bytes [offset, offset+size), clipped to the file size.

        Stored chunks are returned whole (decode, then cut with `plan.slice_range`); the
        gaps between them come back as hole refs clipped to the range (zero fill).
        """
        inode = self._b.inode(ino)
        if not inode.is_reg:
            raise InvalidArgument(f"inode {ino} is not a regular file")
        if offset < 0 or size < 0:
            raise InvalidArgument(f"bad range {offset}+{size}")
        end = min(offset + size, inode.size)
        if offset >= end:
            return []
        result: list[ChunkRef] = []
        cursor = offset
        for chunk in self._b.chunks(inode, offset, end):
            if chunk.file_offset < cursor and result:
                raise FormatError(f"inode {ino}: chunks overlap at file offset {cursor}")
            if chunk.file_offset > cursor:
                result.append(ChunkRef.hole(cursor, chunk.file_offset - cursor))
            result.append(chunk)
            cursor = chunk.file_end
        if cursor < end:
            result.append(ChunkRef.hole(cursor, end - cursor))
        return result

    @_translated
    def attach_blob_meta(self, meta: BlobMeta) -> None:
        """Resolve chunks of `meta`'s blob through its chunk-info array (v6 images)."""
        self._b.attach_source(meta.info.index, meta)

    @_translated
    def verify_inode_digests(self) -> bytes:
        """Recompute every inode digest (v5 merkle tree); returns the root digest.

        Raises DigestMismatch naming the first inode whose digest is wrong, Unsupported for
        images without inode digests (v6).
        """
        return self._b.verify_digests()


def open_image(path: str | Path) -> Image:
    """Map the bootstrap file at `path` read-only and parse it (the map lives with the Image)."""
    with open(path, "rb") as file:
        try:
            buf: Buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            buf = b""
    return Image.from_bytes(buf)
