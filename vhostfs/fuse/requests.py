"""Decoding of FUSE request arguments that are not a single fixed record.

Names, symlink targets and xattr names travel as NUL-terminated strings after the fixed
arguments; the kernel sends exactly the bytes it needs, so anything else (a missing or extra
terminator, a '/', trailing garbage) means the request is malformed and `BadRequest` is raised.
The server answers those with EINVAL. Values are checked here, before a filesystem sees them.
"""

from __future__ import annotations

from typing import Final

from vhostfs.errors import ChainError
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import SetAttr
from vhostfs.virtio.buffers import ChainReader

_DOTS: Final = frozenset((b".", b".."))
_NSEC: Final = 1_000_000_000


class BadRequest(ChainError):
    """The request's bytes are malformed: wrong length, bad name, impossible value."""


def cstrings(data: bytes, count: int) -> list[bytes]:
    """Split `data` into exactly `count` NUL-terminated strings (terminators dropped)."""
    if not data or data[-1] != 0:
        raise BadRequest("string argument without NUL terminator")
    parts = data[:-1].split(b"\0")
    if len(parts) != count:
        raise BadRequest(f"expected {count} strings, got {len(parts)}")
    return parts


def check_name(name: bytes, allow_dots: bool = False) -> bytes:
    """A single path component: non-empty, no '/', and not '.'/'..' unless allowed."""
    if not name or b"/" in name:
        raise BadRequest(f"invalid name {name[:64]!r}")
    if not allow_dots and name in _DOTS:
        raise BadRequest(f"name {name!r} not allowed here")
    return name


def rest(reader: ChainReader) -> bytes:
    """Every remaining readable byte of the request."""
    return reader.read(reader.remaining)


def one_name(reader: ChainReader, allow_dots: bool = False) -> bytes:
    """The request's remaining bytes as exactly one component name."""
    data = reader.read(reader.remaining)
    if len(data) < 2 or data[-1] != 0:
        raise BadRequest("name argument without NUL terminator")
    name = data[:-1]
    if b"\0" in name:
        raise BadRequest("name argument with trailing bytes")
    return check_name(name, allow_dots)


def two_names(reader: ChainReader) -> tuple[bytes, bytes]:
    """Two component names (RENAME, RENAME2)."""
    old, new = cstrings(rest(reader), 2)
    return check_name(old), check_name(new)


def xattr_name(data: bytes) -> bytes:
    """An xattr name: any non-empty bytes without NUL ('/' is legal in xattr names)."""
    (name,) = cstrings(data, 1)
    if not name:
        raise BadRequest("empty xattr name")
    return name


def setxattr(reader: ChainReader, extended: bool) -> tuple[bytes, bytes, int]:
    """(name, value, flags) of a SETXATTR, in the 16-byte form if SETXATTR_EXT was agreed."""
    if extended:
        size, flags, _setxattr_flags, _ = reader.unpack(abi.SetxattrIn.STRUCT)
    else:
        size, flags = reader.unpack(abi.SetxattrInCompat.STRUCT)
    data = rest(reader)
    end = data.find(b"\0")
    if end <= 0:
        raise BadRequest("xattr name missing or without NUL terminator")
    value = data[end + 1 :]
    if len(value) != size:
        raise BadRequest(f"xattr value of {len(value)} bytes, header says {size}")
    return data[:end], value, flags


def setattr_changes(arg: abi.SetattrIn) -> SetAttr:
    """The neutral SetAttr for a fuse_setattr_in (FATTR_* bits select the fields)."""
    valid = arg.valid
    v = abi.SetattrValid
    return SetAttr(
        mode=arg.mode if valid & v.MODE else None,
        uid=arg.uid if valid & v.UID else None,
        gid=arg.gid if valid & v.GID else None,
        size=arg.size if valid & v.SIZE else None,
        atime_ns=_time_ns(arg.atime, arg.atimensec) if _set_time(valid, v.ATIME, v.ATIME_NOW)
        else None,
        mtime_ns=_time_ns(arg.mtime, arg.mtimensec) if _set_time(valid, v.MTIME, v.MTIME_NOW)
        else None,
        atime_now=bool(valid & v.ATIME_NOW),
        mtime_now=bool(valid & v.MTIME_NOW),
        ctime_ns=_time_ns(arg.ctime, arg.ctimensec) if valid & v.CTIME else None,
        kill_suidgid=bool(valid & v.KILL_SUIDGID),
    )  # fmt: skip


def _set_time(valid: int, given: int, now: int) -> bool:
    # The kernel sets ATIME together with ATIME_NOW for "now"; only ATIME alone is a value.
    return bool(valid & given) and not valid & now


def _time_ns(seconds: int, nsec: int) -> int:
    if nsec >= _NSEC:
        raise BadRequest(f"nanoseconds out of range: {nsec}")
    # fuse_setattr_in carries seconds as u64 that the kernel filled from a signed time64_t.
    if seconds >= 1 << 63:
        seconds -= 1 << 64
    return seconds * _NSEC + nsec
