"""Errors of the rafs package.

    RafsError                  base; carries the errno a guest would see (EIO by default)
    ├── FormatError            a bootstrap or blob is malformed (bad magic, bounds, cycle...)
    ├── Unsupported            well formed, but uses a feature this reader does not implement
    ├── NotFound               an inode number or blob index that the image does not have
    ├── NotADirectory          a directory operation on a non-directory (ENOTDIR)
    ├── InvalidArgument        an operation that does not apply to this inode (EINVAL)
    └── CorruptChunk           chunk data cannot be decoded (bad compressed stream, size)
        └── DigestMismatch     chunk data decoded but its digest differs from the record

Every error names what is wrong and where (byte offset, inode, chunk). Errors of lower
libraries (struct, zstandard, lz4, zlib) are translated where they enter, so callers only
ever see RafsError from this package. Only this module mentions errno values.
"""

from __future__ import annotations

import errno as _errno


class RafsError(Exception):
    """Base of every rafs error; `errno` is what a guest would be told."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class FormatError(RafsError):
    """The bootstrap or blob bytes violate the RAFS format."""


class Unsupported(RafsError):
    """The image uses a feature this reader does not implement."""

    errno = _errno.EOPNOTSUPP


class NotFound(RafsError):
    """No such inode (or blob) in this image."""

    errno = _errno.ENOENT


class NotADirectory(RafsError):
    """A directory operation was applied to something else."""

    errno = _errno.ENOTDIR


class InvalidArgument(RafsError):
    """The operation does not apply (readlink of a non-symlink, read of a directory)."""

    errno = _errno.EINVAL


class CorruptChunk(RafsError):
    """A chunk's stored bytes cannot be turned into its uncompressed content."""


class DigestMismatch(CorruptChunk):
    """A chunk decoded, but its digest differs from the one the image records."""
