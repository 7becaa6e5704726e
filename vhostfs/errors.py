"""Errors of the vhostfs package.

    VhostfsError                 base; carries the errno a guest would see
    ├── FsError                  a filesystem operation failed (errno chosen by the fs)
    ├── VhostUserProtocolError   the frontend broke the vhost-user protocol: drop it
    │   └── RejectedRequest      one request is refused, the stream is still in sync
    ├── GuestMemoryError         an address or length falls outside every memory region
    └── ChainError               a descriptor chain is malformed (loop, too long, bad table)

Each kind has one boundary: `fuse/server.py` turns exceptions into negative-errno replies,
`virtiofs.py` returns a malformed chain with length 0, `daemon.py` closes a frontend that
breaks the protocol. Only this module and those boundaries mention errno values.
"""

from __future__ import annotations

import errno as _errno


class VhostfsError(Exception):
    """Base of every vhostfs error; `errno` is what a guest would be told."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class FsError(VhostfsError):
    """A filesystem operation failed; `errno` goes to the guest as -errno."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or _errno.errorcode.get(errno, str(errno)), errno=errno)


class VhostUserProtocolError(VhostfsError):
    """The frontend sent something the vhost-user protocol does not allow."""


class RejectedRequest(VhostUserProtocolError):
    """One well-framed request cannot be carried out; the stream itself is still in sync.

    Answered with a failure ack where the frontend asked for one; the connection goes on.
    """


class GuestMemoryError(VhostfsError):
    """A guest address range is not inside the shared memory regions."""

    errno = _errno.EFAULT


class ChainError(VhostfsError):
    """A descriptor chain cannot be walked or does not hold what the request needs."""

    errno = _errno.EINVAL


def not_supported() -> FsError:
    return FsError(_errno.ENOSYS)


def read_only() -> FsError:
    return FsError(_errno.EROFS)
