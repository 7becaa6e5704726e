"""Encoders for FUSE replies: out header plus payload, written into a ChainWriter.

Every function writes one complete reply starting at stream offset 0 and returns the number
of bytes written, which becomes the used length of the chain. Headers and fixed payloads are
packed in one go with precompiled structs composed from the records in `abi` (the layouts
are declared there once), so the hot replies (GETATTR, LOOKUP, READ) allocate a single bytes
object and touch no dataclass but the filesystem's own `Attr`/`Entry`.

Raises ChainError (from the writer) when the guest's writable buffer is too small.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Final

from rafs.records import Composite, Record
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import Attr, DirEntry, Entry, Ino, Opened, StatFs, stat_fields
from vhostfs.virtio.buffers import ChainWriter


def _compose(*records: type[Record] | type[Composite]) -> struct.Struct:
    """One struct for records laid out back to back (all little-endian, no gaps)."""
    return struct.Struct("<" + "".join(r.STRUCT.format.lstrip("<") for r in records))


OUT_HEADER: Final = abi.OutHeader.STRUCT
OUT_HEADER_SIZE: Final = abi.OutHeader.SIZE
ATTR_REPLY: Final = _compose(abi.OutHeader, abi.AttrOut)
ENTRY_REPLY: Final = _compose(abi.OutHeader, abi.EntryOut)
CREATE_REPLY: Final = _compose(abi.OutHeader, abi.EntryOut, abi.OpenOut)
OPEN_REPLY: Final = _compose(abi.OutHeader, abi.OpenOut)
ENTRY: Final = abi.EntryOut.STRUCT
DIRENT: Final = abi.DirentHeader.STRUCT
DIRENTPLUS: Final = abi.DirentplusHeader.STRUCT
DIRENT_SIZE: Final = abi.DirentHeader.SIZE
DIRENTPLUS_SIZE: Final = abi.DirentplusHeader.SIZE

# filesystem.Attr is a tuple whose fields are struct fuse_attr's, in wire order, so an Attr
# is packed as it is (`*attr`), with no per-field reads. Checked here, once.
_FUSE_ATTR_ORDER: Final = (
    "ino", "size", "blocks", "atime", "mtime", "ctime", "atime_ns", "mtime_ns", "ctime_ns",
    "mode", "nlink", "uid", "gid", "rdev", "blksize", "flags",
)  # fmt: skip
if Attr._fields != _FUSE_ATTR_ORDER:
    raise ImportError("filesystem.Attr no longer lists fuse_attr's fields in wire order")

_NSEC: Final = 1_000_000_000
_timeouts: dict[float, tuple[int, int]] = {}


def split_timeout(seconds: float) -> tuple[int, int]:
    """A cache timeout in seconds as the (seconds, nanoseconds) pair of the wire."""
    cached = _timeouts.get(seconds)
    if cached is not None:
        return cached
    if seconds <= 0:
        pair = (0, 0)
    else:
        whole = int(seconds)
        pair = (whole, min(int((seconds - whole) * _NSEC), _NSEC - 1))
    if len(_timeouts) < 64:  # timeouts are a handful of policy constants
        _timeouts[seconds] = pair
    return pair


def error(writer: ChainWriter, unique: int, errno: int) -> int:
    writer.write_at(0, OUT_HEADER.pack(OUT_HEADER_SIZE, -errno, unique))
    return OUT_HEADER_SIZE


def empty(writer: ChainWriter, unique: int) -> int:
    writer.write_at(0, OUT_HEADER.pack(OUT_HEADER_SIZE, 0, unique))
    return OUT_HEADER_SIZE


def payload(writer: ChainWriter, unique: int, data: bytes | bytearray | memoryview) -> int:
    """A reply of arbitrary bytes after the header (READLINK, xattr values, dirents)."""
    total = OUT_HEADER_SIZE + len(data)
    if data:
        writer.write_at(OUT_HEADER_SIZE, data)
    writer.write_at(0, OUT_HEADER.pack(total, 0, unique))
    return total


def record(writer: ChainWriter, unique: int, rec: Record) -> int:
    return payload(writer, unique, rec.pack())


def attr(writer: ChainWriter, unique: int, value: Attr, timeout: float) -> int:
    secs, nsecs = split_timeout(timeout)
    writer.write_at(
        0, ATTR_REPLY.pack(ATTR_REPLY.size, 0, unique, secs, nsecs, 0, *value)
    )
    return ATTR_REPLY.size


def entry_values(entry: Entry) -> tuple[int, ...]:
    """The fuse_entry_out fields of an Entry, in wire order."""
    esecs, ensecs = split_timeout(entry.entry_timeout)
    asecs, ansecs = split_timeout(entry.attr_timeout)
    return (entry.ino, entry.generation, esecs, asecs, ensecs, ansecs, *entry.attr)


def entry(writer: ChainWriter, unique: int, value: Entry) -> int:
    # `entry_values` inline: every LOOKUP replies through here.
    ino, attr, entry_timeout, attr_timeout, generation = value
    esecs, ensecs = split_timeout(entry_timeout)
    asecs, ansecs = split_timeout(attr_timeout)
    writer.write_at(0, ENTRY_REPLY.pack(ENTRY_REPLY.size, 0, unique, ino, generation,
                                        esecs, asecs, ensecs, ansecs, *attr))  # fmt: skip
    return ENTRY_REPLY.size


def open_flags(opened: Opened) -> int:
    """FOPEN_* bits for an Opened handle."""
    flags = 0
    if opened.direct_io:
        flags |= abi.OpenOutFlags.DIRECT_IO
    if opened.keep_cache:
        flags |= abi.OpenOutFlags.KEEP_CACHE
    if opened.cache_dir:
        flags |= abi.OpenOutFlags.CACHE_DIR
    if opened.nonseekable:
        flags |= abi.OpenOutFlags.NONSEEKABLE
    return int(flags)


def opened(writer: ChainWriter, unique: int, value: Opened) -> int:
    writer.write_at(0, OPEN_REPLY.pack(OPEN_REPLY.size, 0, unique, value.fh, open_flags(value), 0))
    return OPEN_REPLY.size


def created(writer: ChainWriter, unique: int, new: Entry, handle: Opened) -> int:
    data = CREATE_REPLY.pack(
        CREATE_REPLY.size, 0, unique, *entry_values(new), handle.fh, open_flags(handle), 0
    )
    writer.write_at(0, data)
    return CREATE_REPLY.size


def statfs(writer: ChainWriter, unique: int, st: StatFs) -> int:
    rec = abi.KStatfs(st.blocks, st.bfree, st.bavail, st.files, st.ffree, st.bsize,
                      st.namelen, st.frsize, 0)  # fmt: skip
    return record(writer, unique, rec)


def dirent(buf: bytearray, ino: int, off: int, dtype: int, name: bytes) -> None:
    """Append one fuse_dirent, name and padding to `buf`."""
    buf += DIRENT.pack(ino, off, len(name), dtype)
    buf += name
    pad = -len(buf) & 7
    if pad:
        buf += bytes(pad)


_NO_ENTRY: Final = (0,) * len(ENTRY.unpack(bytes(ENTRY.size)))


def direntplus(
    buf: bytearray, ino: int, off: int, dtype: int, name: bytes, new: Entry | None
) -> None:
    """Append one fuse_direntplus (entry_out, dirent, name, padding); None = no entry."""
    values = _NO_ENTRY if new is None else entry_values(new)
    buf += DIRENTPLUS.pack(*values, ino, off, len(name), dtype)
    buf += name
    pad = -len(buf) & 7
    if pad:
        buf += bytes(pad)


def listable(name: bytes) -> bool:
    """Whether a directory entry's name may reach the guest: not empty, no '/' or NUL."""
    return bool(name) and b"/" not in name and b"\0" not in name


_PLUS_RECORD: Final = DIRENTPLUS_SIZE + 7  # a record is this plus its name, 8-aligned
_PADDING: Final = tuple(bytes(n) for n in range(8))


class PlusReply:
    """The payload of a READDIRPLUS reply that a filesystem fills (filesystem.PlusListing).

    `forget` takes back the lookup of an entry dropped for its name: a filesystem's
    listing is not trusted to hand only names the guest may see.
    """

    __slots__ = ("_forget", "_limit", "payload")

    def __init__(self, limit: int, forget: Callable[[Ino, int], object]) -> None:
        self.payload = bytearray()
        self._limit = limit
        self._forget = forget

    def most(self) -> int:
        return max(0, self._limit - len(self.payload)) // ((_PLUS_RECORD + 1) & ~7)

    def fitting(self, entries: list[DirEntry]) -> list[DirEntry]:
        end, room = len(self.payload), self._limit
        for count, entry in enumerate(entries):
            end += (_PLUS_RECORD + len(entry.name)) & ~7
            if end > room:
                return entries[:count]
        return entries

    def add(self, entry: DirEntry, looked_up: Entry | None) -> bool:
        name = entry.name
        buf = self.payload
        if len(buf) + ((_PLUS_RECORD + len(name)) & ~7) > self._limit:
            return False
        if not listable(name):
            if looked_up is not None:
                self._forget(looked_up.ino, 1)
            return True
        direntplus(buf, entry.ino, entry.offset, entry.type, name, looked_up)
        return True

    def add_stat(self, entry: DirEntry, node: Ino, st: os.stat_result, timeout: float) -> bool:
        name = entry.name
        buf = self.payload
        if len(buf) + ((_PLUS_RECORD + len(name)) & ~7) > self._limit:
            return False
        if not name or b"/" in name or b"\0" in name:  # `listable`, inline: once per name
            self._forget(node, 1)
            return True
        secs, nsecs = split_timeout(timeout)
        buf += DIRENTPLUS.pack(node, 0, secs, secs, nsecs, nsecs, *stat_fields(st),
                               entry.ino, entry.offset, len(name), entry.type)  # fmt: skip
        buf += name
        buf += _PADDING[-len(buf) & 7]
        return True
