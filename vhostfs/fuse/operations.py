"""One short handler per FUSE opcode: decode the arguments, call the filesystem, encode.

Every handler has the same signature, `(unique, nodeid, ctx, reader, writer) -> used length`,
so the dispatcher in `server.py` is a single dict lookup. Handlers raise freely (FsError,
OSError, ChainError, BadRequest); the server turns exceptions into errno replies. Fixed
arguments are read with the records' precompiled structs (no dataclass per request on the
hot paths); strings go through `requests`.

Opcodes the guest may send but we do not implement (locks, ioctl, poll, bmap, DAX mappings,
copy_file_range, statx) have no handler and get ENOSYS from the dispatcher.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from vhostfs.errors import FsError
from vhostfs.fuse import abi, replies
from vhostfs.fuse.filesystem import Context, DirEntry, Entry, FileHandle, Filesystem, Ino
from vhostfs.fuse.requests import (
    BadRequest,
    check_name,
    cstrings,
    one_name,
    rest,
    setattr_changes,
    setxattr,
    two_names,
    xattr_name,
)
from vhostfs.fuse.session import Session
from vhostfs.virtio.buffers import ChainReader, ChainWriter

if TYPE_CHECKING:
    from vhostfs.ratelog import RateLimitedLog

Handler: TypeAlias = Callable[[int, int, Context, ChainReader, ChainWriter], Awaitable[int]]

Op = abi.Opcode
HDR: Final = replies.OUT_HEADER_SIZE
_GETATTR_IN: Final = abi.GetattrIn.STRUCT
_READ_IN: Final = abi.ReadIn.STRUCT
_WRITE_IN: Final = abi.WriteIn.STRUCT
_OUT_HEADER: Final = replies.OUT_HEADER
_DOTS: Final = (b".", b"..")


def _ino(nodeid: int) -> Ino:
    return nodeid  # type: ignore[return-value]  # NewType at zero cost on the hot path


def _fh(value: int) -> FileHandle:
    return value  # type: ignore[return-value]


class Operations:
    """The opcode handlers of one FUSE session over `fs`."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.session: Session | None = None

    def table(self) -> dict[int, Handler]:
        """Opcode -> handler for every opcode implemented here."""
        return {op: getattr(self, op.name.lower()) for op in _IMPLEMENTED}

    # --- names and attributes -------------------------------------------------------------

    async def lookup(self, unique: int, nodeid: int, ctx: Context,
                     reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        export = self.session is not None and self.session.export_support
        name = one_name(reader, allow_dots=export)
        return replies.entry(writer, unique, await self.fs.lookup(ctx, _ino(nodeid), name))

    def forget(self, nodeid: int, reader: ChainReader) -> None:
        (nlookup,) = reader.unpack(abi.ForgetIn.STRUCT)
        self.fs.forget(_ino(nodeid), nlookup)

    def batch_forget(self, reader: ChainReader, log: RateLimitedLog) -> None:
        count, _ = reader.unpack(abi.BatchForgetIn.STRUCT)
        present = reader.remaining // abi.ForgetOne.SIZE
        if count != present or reader.remaining % abi.ForgetOne.SIZE:
            log.warning("FUSE BATCH_FORGET: count %d, %d entries present", count, present)
        data = reader.read(min(count, present) * abi.ForgetOne.SIZE)
        items = [(_ino(n), k) for n, k in abi.ForgetOne.STRUCT.iter_unpack(data)]
        self.fs.batch_forget(items)

    async def getattr(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        flags, _, fh = reader.unpack(_GETATTR_IN)
        handle = _fh(fh) if flags & abi.GETATTR_FH else None
        attr, timeout = await self.fs.getattr(ctx, _ino(nodeid), handle)
        return replies.attr(writer, unique, attr, timeout)

    async def setattr(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        arg = abi.SetattrIn.unpack(reader.read(abi.SetattrIn.SIZE))
        handle = _fh(arg.fh) if arg.valid & abi.SetattrValid.FH else None
        changes = setattr_changes(arg)
        attr, timeout = await self.fs.setattr(ctx, _ino(nodeid), handle, changes)
        return replies.attr(writer, unique, attr, timeout)

    async def readlink(self, unique: int, nodeid: int, ctx: Context,
                       reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        return replies.payload(writer, unique, await self.fs.readlink(ctx, _ino(nodeid)))

    async def statfs(self, unique: int, nodeid: int, ctx: Context,
                     reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        return replies.statfs(writer, unique, await self.fs.statfs(ctx, _ino(nodeid)))

    async def access(self, unique: int, nodeid: int, ctx: Context,
                     reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        mask, _ = reader.unpack(abi.AccessIn.STRUCT)
        await self.fs.access(ctx, _ino(nodeid), mask)
        return replies.empty(writer, unique)

    # --- namespace changes ----------------------------------------------------------------

    async def symlink(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        name, target = cstrings(rest(reader), 2)
        if not target:
            raise BadRequest("empty symlink target")
        new = await self.fs.symlink(ctx, _ino(nodeid), check_name(name), target)
        return replies.entry(writer, unique, new)

    async def mknod(self, unique: int, nodeid: int, ctx: Context,
                    reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        mode, rdev, umask, _ = reader.unpack(abi.MknodIn.STRUCT)
        name = one_name(reader)
        new = await self.fs.mknod(ctx, _ino(nodeid), name, mode, rdev, umask)
        return replies.entry(writer, unique, new)

    async def mkdir(self, unique: int, nodeid: int, ctx: Context,
                    reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        mode, umask = reader.unpack(abi.MkdirIn.STRUCT)
        new = await self.fs.mkdir(ctx, _ino(nodeid), one_name(reader), mode, umask)
        return replies.entry(writer, unique, new)

    async def unlink(self, unique: int, nodeid: int, ctx: Context,
                     reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        await self.fs.unlink(ctx, _ino(nodeid), one_name(reader))
        return replies.empty(writer, unique)

    async def rmdir(self, unique: int, nodeid: int, ctx: Context,
                    reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        await self.fs.rmdir(ctx, _ino(nodeid), one_name(reader))
        return replies.empty(writer, unique)

    async def rename(self, unique: int, nodeid: int, ctx: Context,
                     reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        (newdir,) = reader.unpack(abi.RenameIn.STRUCT)
        old, new = two_names(reader)
        await self.fs.rename(ctx, _ino(nodeid), old, _ino(newdir), new, 0)
        return replies.empty(writer, unique)

    async def rename2(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        newdir, flags, _ = reader.unpack(abi.Rename2In.STRUCT)
        old, new = two_names(reader)
        await self.fs.rename(ctx, _ino(nodeid), old, _ino(newdir), new, flags)
        return replies.empty(writer, unique)

    async def link(self, unique: int, nodeid: int, ctx: Context,
                   reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        (old,) = reader.unpack(abi.LinkIn.STRUCT)
        new = await self.fs.link(ctx, _ino(old), _ino(nodeid), one_name(reader))
        return replies.entry(writer, unique, new)

    # --- files ----------------------------------------------------------------------------

    async def open(self, unique: int, nodeid: int, ctx: Context,
                   reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        flags, _ = reader.unpack(abi.OpenIn.STRUCT)
        return replies.opened(writer, unique, await self.fs.open(ctx, _ino(nodeid), flags))

    async def create(self, unique: int, nodeid: int, ctx: Context,
                     reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        flags, mode, umask, _ = reader.unpack(abi.CreateIn.STRUCT)
        name = one_name(reader)
        new, handle = await self.fs.create(ctx, _ino(nodeid), name, mode, flags, umask)
        return replies.created(writer, unique, new, handle)

    async def tmpfile(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        # Laid out as CREATE (Linux fuse_create_open): the name is the VFS's placeholder
        # for the unnamed dentry ("/"), required to be there but meaningless.
        flags, mode, umask, _ = reader.unpack(abi.CreateIn.STRUCT)
        cstrings(rest(reader), 1)
        new, handle = await self.fs.tmpfile(ctx, _ino(nodeid), mode, flags, umask)
        return replies.created(writer, unique, new, handle)

    async def read(self, unique: int, nodeid: int, ctx: Context,
                   reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, offset, size, _, _, _, _ = reader.unpack(_READ_IN)
        size = min(size, writer.capacity - HDR)
        bufs = writer.views(HDR, size) if size else []
        count = await self.fs.read(ctx, _ino(nodeid), _fh(fh), offset, bufs)
        if not 0 <= count <= size:
            raise FsError(errno.EIO, f"filesystem read {count} bytes into {size}")
        writer.commit(HDR + count)
        writer.write_at(0, _OUT_HEADER.pack(HDR + count, 0, unique))
        return HDR + count

    async def write(self, unique: int, nodeid: int, ctx: Context,
                    reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, offset, size, write_flags, _, _, _ = reader.unpack(_WRITE_IN)
        if size != reader.remaining:
            raise BadRequest(f"WRITE of {size} bytes with {reader.remaining} present")
        data = reader.views(size)
        count = await self.fs.write(ctx, _ino(nodeid), _fh(fh), offset, data, write_flags)
        return replies.record(writer, unique, abi.WriteOut(count, 0))

    async def flush(self, unique: int, nodeid: int, ctx: Context,
                    reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, _, _, owner = reader.unpack(abi.FlushIn.STRUCT)
        await self.fs.flush(ctx, _ino(nodeid), _fh(fh), owner)
        return replies.empty(writer, unique)

    async def release(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, flags, _, _ = reader.unpack(abi.ReleaseIn.STRUCT)
        await self.fs.release(ctx, _ino(nodeid), _fh(fh), flags)
        return replies.empty(writer, unique)

    async def fsync(self, unique: int, nodeid: int, ctx: Context,
                    reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, flags, _ = reader.unpack(abi.FsyncIn.STRUCT)
        await self.fs.fsync(ctx, _ino(nodeid), _fh(fh), bool(flags & abi.FSYNC_FDATASYNC))
        return replies.empty(writer, unique)

    async def fallocate(self, unique: int, nodeid: int, ctx: Context,
                        reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, offset, length, mode, _ = reader.unpack(abi.FallocateIn.STRUCT)
        await self.fs.fallocate(ctx, _ino(nodeid), _fh(fh), offset, length, mode)
        return replies.empty(writer, unique)

    async def lseek(self, unique: int, nodeid: int, ctx: Context,
                    reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, offset, whence, _ = reader.unpack(abi.LseekIn.STRUCT)
        result = await self.fs.lseek(ctx, _ino(nodeid), _fh(fh), offset, whence)
        return replies.record(writer, unique, abi.LseekOut(result))

    async def syncfs(self, unique: int, nodeid: int, ctx: Context,
                     reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        reader.read(abi.SyncfsIn.SIZE)
        await self.fs.syncfs(ctx, _ino(nodeid))
        return replies.empty(writer, unique)

    # --- xattrs ---------------------------------------------------------------------------

    async def setxattr(self, unique: int, nodeid: int, ctx: Context,
                       reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        extended = self.session is not None and self.session.setxattr_ext
        name, value, flags = setxattr(reader, extended)
        await self.fs.setxattr(ctx, _ino(nodeid), name, value, flags)
        return replies.empty(writer, unique)

    async def getxattr(self, unique: int, nodeid: int, ctx: Context,
                       reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        size, _ = reader.unpack(abi.GetxattrIn.STRUCT)
        value = await self.fs.getxattr(ctx, _ino(nodeid), xattr_name(rest(reader)))
        return _sized_reply(writer, unique, size, value)

    async def listxattr(self, unique: int, nodeid: int, ctx: Context,
                        reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        size, _ = reader.unpack(abi.GetxattrIn.STRUCT)
        names = await self.fs.listxattr(ctx, _ino(nodeid))
        return _sized_reply(writer, unique, size, b"".join(n + b"\0" for n in names))

    async def removexattr(self, unique: int, nodeid: int, ctx: Context,
                          reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        await self.fs.removexattr(ctx, _ino(nodeid), xattr_name(rest(reader)))
        return replies.empty(writer, unique)

    # --- directories ----------------------------------------------------------------------

    async def opendir(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        flags, _ = reader.unpack(abi.OpenIn.STRUCT)
        return replies.opened(writer, unique, await self.fs.opendir(ctx, _ino(nodeid), flags))

    async def releasedir(self, unique: int, nodeid: int, ctx: Context,
                         reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, _, _, _ = reader.unpack(abi.ReleaseIn.STRUCT)
        await self.fs.releasedir(ctx, _ino(nodeid), _fh(fh))
        return replies.empty(writer, unique)

    async def fsyncdir(self, unique: int, nodeid: int, ctx: Context,
                       reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, flags, _ = reader.unpack(abi.FsyncIn.STRUCT)
        await self.fs.fsyncdir(ctx, _ino(nodeid), _fh(fh), bool(flags & abi.FSYNC_FDATASYNC))
        return replies.empty(writer, unique)

    async def readdir(self, unique: int, nodeid: int, ctx: Context,
                      reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, offset, size, _, _, _, _ = reader.unpack(_READ_IN)
        limit = min(size, writer.capacity - HDR)
        buf = bytearray()
        entries = await self.fs.readdir(ctx, _ino(nodeid), _fh(fh), offset)
        try:
            for d in _valid(entries):
                if len(buf) + abi.rec_align(replies.DIRENT_SIZE + len(d.name)) > limit:
                    break
                replies.dirent(buf, d.ino, d.offset, d.type, d.name)
        finally:
            _close(entries)
        return replies.payload(writer, unique, buf)

    async def readdirplus(self, unique: int, nodeid: int, ctx: Context,
                          reader: ChainReader, writer: ChainWriter) -> int:  # fmt: skip
        fh, offset, size, _, _, _, _ = reader.unpack(_READ_IN)
        limit = min(size, writer.capacity - HDR)
        listed = replies.PlusReply(limit, self.fs.forget)
        try:
            filled = await self.fs.readdirplus(ctx, _ino(nodeid), _fh(fh), offset, listed)
        except Exception:
            # Its entries' lookups are counted: send them; the guest asks again from the
            # last one and gets the error then, with nothing counted.
            if not listed.payload:
                raise
            filled = True
        if filled:
            return replies.payload(writer, unique, listed.payload)
        buf = bytearray()
        entries = await self.fs.readdir(ctx, _ino(nodeid), _fh(fh), offset)
        try:
            for d in _valid(entries):
                if len(buf) + abi.rec_align(replies.DIRENTPLUS_SIZE + len(d.name)) > limit:
                    break
                try:
                    new = await self._plus_entry(ctx, nodeid, d, sent_any=bool(buf))
                except _RacedAway:
                    continue
                replies.direntplus(buf, d.ino, d.offset, d.type, d.name, new)
        except _StopListing:
            pass
        finally:
            _close(entries)
        return replies.payload(writer, unique, buf)

    async def _plus_entry(
        self, ctx: Context, parent: int, d: DirEntry, sent_any: bool
    ) -> Entry | None:
        """The Entry for one READDIRPLUS record, None for '.'/'..'; _RacedAway if gone.

        Each successful lookup counts as a LOOKUP, so once entries were packed an error
        stops the listing (raising _StopListing) instead of failing the whole reply.
        """
        if d.name in _DOTS:
            return None
        try:
            return await self.fs.lookup(ctx, _ino(parent), d.name)
        except Exception as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                raise _RacedAway from exc
            if sent_any:
                raise _StopListing from exc
            raise


class _RacedAway(Exception):
    """A listed name vanished before its lookup: leave it out of the reply."""


class _StopListing(Exception):
    """Ends a READDIRPLUS reply early, keeping the entries already packed."""


def _sized_reply(writer: ChainWriter, unique: int, size: int, value: bytes) -> int:
    """GETXATTR/LISTXATTR: size 0 probes the length, a too-small buffer is ERANGE."""
    if size == 0:
        return replies.record(writer, unique, abi.GetxattrOut(len(value), 0))
    if len(value) > size:
        raise FsError(errno.ERANGE)
    return replies.payload(writer, unique, value)


def _valid(entries: Iterator[DirEntry]) -> Iterator[DirEntry]:
    """Drop entries no guest may see (`replies.listable`)."""
    listable = replies.listable
    for d in entries:
        if listable(d.name):
            yield d


def _close(entries: Iterator[Any]) -> None:
    close = getattr(entries, "close", None)
    if close is not None:
        close()


_IMPLEMENTED: Final = (
    Op.LOOKUP, Op.GETATTR, Op.SETATTR, Op.READLINK, Op.SYMLINK, Op.MKNOD, Op.MKDIR,
    Op.UNLINK, Op.RMDIR, Op.RENAME, Op.RENAME2, Op.LINK, Op.OPEN, Op.CREATE, Op.READ,
    Op.WRITE, Op.FLUSH, Op.RELEASE, Op.FSYNC, Op.FALLOCATE, Op.LSEEK, Op.SYNCFS, Op.STATFS,
    Op.ACCESS, Op.SETXATTR, Op.GETXATTR, Op.LISTXATTR, Op.REMOVEXATTR, Op.OPENDIR,
    Op.READDIR, Op.READDIRPLUS, Op.RELEASEDIR, Op.FSYNCDIR, Op.TMPFILE,
)  # fmt: skip
