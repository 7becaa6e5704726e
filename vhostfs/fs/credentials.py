"""Create host files as the guest caller: fsuid/fsgid and umask around one syscall.

Why: a file the guest creates must belong to the guest process's uid/gid, and the host
kernel should decide the group (setgid directories), strip S_ISGID the caller may not set,
and refuse what the caller may not do (a 0700 directory of someone else), exactly as it
would for that user. Creating as root and chowning afterwards gets none of this right.

How: setfsuid(2)/setfsgid(2) change only the credentials used for filesystem access, only
for the calling thread, and moving fsuid away from 0 drops the filesystem capabilities
(CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER, CAP_FSETID, CAP_MKNOD...) from the effective set;
moving it back to 0 restores them. trio runs every filesystem method on the event-loop
thread, and the passthrough methods never await, so `caller` switches, runs one syscall
and switches back before any other request can run on this thread. Everything that needs
privilege (open_by_handle_at needs CAP_DAC_READ_SEARCH) must happen outside the block.

The umask is process-wide (threads share it, CLONE_FS); the guest's umask is applied for
the duration of the call, so the daemon's own umask (often 022) never masks guest modes.
Without FUSE_DONT_MASK the guest kernel has already applied that umask to the mode, so
applying it again is idempotent; it matters when the host directory has a default ACL.

Limits: supplementary groups are not switched (the process keeps its own; FUSE only sends
them with CREATE_SUPP_GROUP, which is not negotiated), so a guest user whose access comes
from a supplementary group is refused on the host. A daemon that is not root cannot switch
at all: it creates files as itself, as virtiofsd does unprivileged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vhostfs.errors import FsError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_setfsuid = _libc.setfsuid
_setfsuid.argtypes = [ctypes.c_uint]
_setfsuid.restype = ctypes.c_int
_setfsgid = _libc.setfsgid
_setfsgid.argtypes = [ctypes.c_uint]
_setfsgid.restype = ctypes.c_int


def _switch(setter: Callable[[int], int], value: int) -> int:
    """Set an fs id and return the previous one; FsError(EPERM) if it did not take.

    setfs*id never report failure: they return the previous value either way, so a second
    call (which returns the value now in force) confirms it.
    """
    previous = int(setter(value))
    if int(setter(value)) != value:
        setter(previous)
        raise FsError(errno.EPERM, f"cannot switch filesystem id to {value}")
    return previous


@contextmanager
def caller(uid: int, gid: int, umask: int | None = None) -> Iterator[None]:
    """Run the block's syscalls with fsuid `uid`, fsgid `gid` and `umask` (if given).

    The block must not await (see the module docstring). Without privilege to switch
    (the daemon is not root) the ids stay as they are.
    """
    old_umask = os.umask(umask) if umask is not None else None
    try:
        if os.geteuid() != 0 or (uid, gid) == (0, 0):
            yield
            return
        old_gid = _switch(_setfsgid, gid)
        try:
            old_uid = _switch(_setfsuid, uid)
            try:
                yield
            finally:
                _setfsuid(old_uid)
        finally:
            _setfsgid(old_gid)
    finally:
        if old_umask is not None:
            os.umask(old_umask)


def current() -> tuple[int, int]:
    """(fsuid, fsgid) in force on this thread (for tests and assertions)."""
    # An invalid id (-1) is refused and the call only reports the current value.
    return int(_setfsuid(0xFFFF_FFFF)), int(_setfsgid(0xFFFF_FFFF))
