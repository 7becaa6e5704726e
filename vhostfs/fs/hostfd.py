"""Linux syscalls the passthrough filesystem needs that the os module lacks (via ctypes).

* `openat2` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS: open one name
  relative to a directory fd such that nothing outside that directory can ever be reached
  and no symlink is followed (Linux 5.6+; callers fall back to openat with O_NOFOLLOW).
* `name_to_handle_at` / `open_by_handle_at`: a file handle names an inode persistently
  without holding an fd, so the passthrough filesystem can forget fds and reopen inodes on
  demand (needs CAP_DAC_READ_SEARCH and a filesystem that exports handles; the caller
  probes once and falls back when either is missing).
* `renameat2` (flags), `utimensat` (UTIME_NOW / UTIME_OMIT), `fallocate` (mode) and `syncfs`,
  which the os module lacks or exposes without those arguments.

All functions raise OSError with the syscall's errno. They never block for long (metadata
only) and keep no state but whether openat2 exists; the caller owns every fd returned.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from typing import Final

AT_EMPTY_PATH: Final = 0x1000
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
SYS_OPENAT2: Final = 437  # the same on every architecture (new-style syscall numbering)
MAX_HANDLE_SZ: Final = 128  # linux/exportfs.h
_HANDLE_HEAD: Final = struct.Struct("<Ii")  # struct file_handle: handle_bytes, handle_type

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int
]  # fmt: skip
_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}")


_openat2_works = True
_RESOLVE: Final = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_HOW_SIZE: Final = ctypes.sizeof(_OpenHow)
# One per (flags, mode) combination (a handful), never mutated.
_hows: dict[tuple[int, int], _OpenHow] = {}


def open_beneath(dirfd: int, name: bytes, flags: int, mode: int = 0) -> int:
    """Open `name` (one component) under `dirfd` without following any symlink.

    With O_PATH | O_NOFOLLOW a trailing symlink yields an fd for the link itself; with
    O_CREAT `mode` applies (less the process umask) and an existing symlink is ELOOP, never
    followed. Raises OSError (ELOOP for a symlink without O_PATH, EXDEV/ENOENT for escapes).
    """
    global _openat2_works
    if _openat2_works:
        how = _hows.get((flags, mode))
        if how is None:
            how = _hows[flags, mode] = _OpenHow(flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                                                _RESOLVE)  # fmt: skip
        fd = _libc.syscall(SYS_OPENAT2, dirfd, name, ctypes.byref(how), _HOW_SIZE)
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        # EPERM is also an ordinary answer (an immutable file opened for writing, a caller
        # switched to another fsuid): only give up on openat2 if it fails where it cannot.
        if code == errno.EPERM and _openat2_probe() == 0:
            raise OSError(code, os.strerror(code), name)
        if code not in (errno.ENOSYS, errno.EPERM):
            raise OSError(code, os.strerror(code), name)
        _openat2_works = False  # old kernel or a seccomp filter: openat is as safe here
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)


def _openat2_probe() -> int:
    """0 if openat2 works at all (an O_PATH open of "/"), else its errno."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, 0)
    fd = _libc.syscall(SYS_OPENAT2, -100, b"/", ctypes.byref(how), _HOW_SIZE)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def name_to_handle(fd: int) -> tuple[bytes, int]:
    """(file handle, mount id) of the inode `fd` refers to (O_PATH fds work)."""
    buf = ctypes.create_string_buffer(_HANDLE_HEAD.size + MAX_HANDLE_SZ)
    _HANDLE_HEAD.pack_into(buf, 0, MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    if _name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), AT_EMPTY_PATH) != 0:
        _raise("name_to_handle_at")
    size, _ = _HANDLE_HEAD.unpack_from(buf, 0)
    return buf.raw[: _HANDLE_HEAD.size + size], mount_id.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """Open the inode named by `handle`; `mount_fd` is a non-O_PATH fd on its mount."""
    fd = _open_by_handle_at(mount_fd, handle, flags | os.O_CLOEXEC)
    if fd < 0:
        _raise("open_by_handle_at")
    return int(fd)


RENAME_NOREPLACE: Final = 1 << 0  # linux/fs.h
RENAME_EXCHANGE: Final = 1 << 1
RENAME_WHITEOUT: Final = 1 << 2
UTIME_NOW: Final = (1 << 30) - 1  # linux/stat.h
UTIME_OMIT: Final = (1 << 30) - 2

_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]  # fmt: skip
_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
_fallocate = _libc.fallocate64
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_syncfs = _libc.syncfs
_syncfs.argtypes = [ctypes.c_int]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    """rename(2) of single components relative to directory fds (O_PATH fds work)."""
    if _renameat2(olddirfd, old, newdirfd, new, flags) != 0:
        _raise("renameat2")


def utimensat(path: bytes, atime_ns: int | None, mtime_ns: int | None, atime_now: bool,
              mtime_now: bool) -> None:  # fmt: skip
    """Set the times of `path` (following it); None leaves a time alone (UTIME_OMIT)."""
    times = (_Timespec * 2)()
    for slot, value, now in ((times[0], atime_ns, atime_now), (times[1], mtime_ns, mtime_now)):
        if now:
            slot.tv_sec, slot.tv_nsec = 0, UTIME_NOW
        elif value is None:
            slot.tv_sec, slot.tv_nsec = 0, UTIME_OMIT
        else:
            slot.tv_sec, slot.tv_nsec = divmod(value, 1_000_000_000)
    if _utimensat(-100, path, times, 0) != 0:  # AT_FDCWD: `path` is absolute
        _raise("utimensat")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode bits (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE...)."""
    if _fallocate(fd, mode, offset, length) != 0:
        _raise("fallocate")


def syncfs(fd: int) -> None:
    """Flush the filesystem `fd` is on (not an O_PATH fd)."""
    if _syncfs(fd) != 0:
        _raise("syncfs")
