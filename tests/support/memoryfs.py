"""MemoryFilesystem: an in-memory, read-write Filesystem fake for server and daemon tests.

A tree of `Node`s keyed by node id (node id = st_ino, root = 1). It keeps lookup counts the
way the contract in `vhostfs.fuse.filesystem` describes, records every call in `calls`, and
implements every operation so that each FUSE opcode has a happy path to test. Errors are
FsError with the errno a real filesystem would give.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import trio

from vhostfs.errors import FsError
from vhostfs.fuse.filesystem import (
    ROOT_INO,
    Attr,
    Context,
    DirEntry,
    Entry,
    FileHandle,
    Filesystem,
    FsOptions,
    Ino,
    Opened,
    SetAttr,
    StatFs,
)

TIMEOUT = 1.0  # seconds the guest may cache entries and attributes


@dataclass
class Node:
    ino: Ino
    mode: int
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, Ino] = field(default_factory=dict)
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    nlink: int = 1
    parent: Ino = ROOT_INO
    rdev: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0

    def attr(self) -> Attr:
        size = len(self.target) if stat.S_ISLNK(self.mode) else len(self.data)
        return Attr(
            ino=self.ino, size=size, blocks=(size + 511) // 512,
            atime=self.atime_ns // 10**9, mtime=self.mtime_ns // 10**9, ctime=0,
            atime_ns=self.atime_ns % 10**9, mtime_ns=self.mtime_ns % 10**9, ctime_ns=0,
            mode=self.mode, nlink=self.nlink, uid=self.uid, gid=self.gid, rdev=self.rdev,
        )  # fmt: skip


class MemoryFilesystem(Filesystem):
    """`awaiting`: READ really yields to trio once (as a blob fetch would) and the filesystem
    says so through `may_suspend`; with `inline_root` the root node claims to serve inline
    (so the device still picks a queue thread, which hands the awaiting reads over, like a
    pseudo root with image mounts); `claims_inline` makes every node claim so (a broken
    filesystem, for the queue thread's defences)."""

    def __init__(self, options: FsOptions | None = None, *, awaiting: bool = False,
                 inline_root: bool = False, claims_inline: bool = False) -> None:  # fmt: skip
        self.options = options or FsOptions()
        self.awaiting = awaiting
        self.inline_root = inline_root
        self.claims_inline = claims_inline
        self.nodes: dict[Ino, Node] = {}
        self.lookups: dict[Ino, int] = {}
        self.handles: dict[FileHandle, Ino] = {}
        self.calls: list[str] = []
        self.inits = 0
        self.destroys = 0
        self._next_ino = 2
        self._next_fh = 1
        self.nodes[ROOT_INO] = Node(ROOT_INO, stat.S_IFDIR | 0o755, nlink=2)

    # --- building the tree (test helpers) -------------------------------------------------

    def add(self, parent: Ino, name: bytes, mode: int, data: bytes = b"",
            target: bytes = b"") -> Ino:  # fmt: skip
        ino = Ino(self._next_ino)
        self._next_ino += 1
        node = Node(ino, mode, bytearray(data), target=target, parent=parent)
        if stat.S_ISDIR(mode):
            node.nlink = 2
        self.nodes[ino] = node
        self.nodes[parent].children[name] = ino
        return ino

    def add_file(self, name: bytes, data: bytes = b"", parent: Ino = ROOT_INO) -> Ino:
        return self.add(parent, name, stat.S_IFREG | 0o644, data)

    def add_dir(self, name: bytes, parent: Ino = ROOT_INO) -> Ino:
        return self.add(parent, name, stat.S_IFDIR | 0o755)

    def node(self, ino: Ino) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FsError(errno.ENOENT) from None

    def _dir(self, ino: Ino) -> Node:
        node = self.node(ino)
        if not stat.S_ISDIR(node.mode):
            raise FsError(errno.ENOTDIR)
        return node

    def _entry(self, ino: Ino) -> Entry:
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return Entry(ino, self.nodes[ino].attr(), TIMEOUT, TIMEOUT)

    def _handle(self, ino: Ino) -> FileHandle:
        fh = FileHandle(self._next_fh)
        self._next_fh += 1
        self.handles[fh] = ino
        return fh

    def _check_handle(self, ino: Ino, fh: FileHandle) -> Node:
        if self.handles.get(fh) != ino:
            raise FsError(errno.EBADF)
        return self.nodes[ino]

    # --- session --------------------------------------------------------------------------

    async def init(self) -> FsOptions:
        self.inits += 1
        return self.options

    async def destroy(self) -> None:
        self.destroys += 1
        self.lookups.clear()
        self.handles.clear()

    # --- metadata -------------------------------------------------------------------------

    async def lookup(self, ctx: Context, parent: Ino, name: bytes) -> Entry:
        self.calls.append("lookup")
        directory = self._dir(parent)
        if name == b".":
            return self._entry(parent)
        if name == b"..":
            return self._entry(directory.parent)
        ino = directory.children.get(name)
        if ino is None:
            raise FsError(errno.ENOENT)
        return self._entry(ino)

    def forget(self, ino: Ino, nlookup: int) -> None:
        left = self.lookups.get(ino, 0) - nlookup
        if left > 0:
            self.lookups[ino] = left
        else:
            self.lookups.pop(ino, None)

    async def getattr(self, ctx: Context, ino: Ino, fh: FileHandle | None) -> tuple[Attr, float]:
        if fh is not None:
            self._check_handle(ino, fh)
        return self.node(ino).attr(), TIMEOUT

    async def setattr(self, ctx: Context, ino: Ino, fh: FileHandle | None,
                      changes: SetAttr) -> tuple[Attr, float]:  # fmt: skip
        node = self.node(ino)
        if changes.mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(changes.mode)
        if changes.uid is not None:
            node.uid = changes.uid
        if changes.gid is not None:
            node.gid = changes.gid
        if changes.size is not None:
            del node.data[changes.size :]
            node.data.extend(bytes(changes.size - len(node.data)))
        if changes.mtime_ns is not None:
            node.mtime_ns = changes.mtime_ns
        if changes.atime_ns is not None:
            node.atime_ns = changes.atime_ns
        return node.attr(), TIMEOUT

    async def readlink(self, ctx: Context, ino: Ino) -> bytes:
        node = self.node(ino)
        if not stat.S_ISLNK(node.mode):
            raise FsError(errno.EINVAL)
        return node.target

    async def statfs(self, ctx: Context, ino: Ino) -> StatFs:
        return StatFs(1000, 500, 400, 100, 50, 4096, 255, 4096)

    async def access(self, ctx: Context, ino: Ino, mask: int) -> None:
        node = self.node(ino)
        if mask & os.X_OK and not node.mode & 0o111:
            raise FsError(errno.EACCES)

    # --- namespace ------------------------------------------------------------------------

    def _new(self, parent: Ino, name: bytes, mode: int, **kw: bytes) -> Entry:
        directory = self._dir(parent)
        if name in directory.children:
            raise FsError(errno.EEXIST)
        return self._entry(self.add(parent, name, mode, **kw))

    async def symlink(self, ctx: Context, parent: Ino, name: bytes, target: bytes) -> Entry:
        return self._new(parent, name, stat.S_IFLNK | 0o777, target=target)

    async def mknod(self, ctx: Context, parent: Ino, name: bytes, mode: int, rdev: int,
                    umask: int) -> Entry:  # fmt: skip
        entry = self._new(parent, name, mode & ~umask)
        self.nodes[entry.ino].rdev = rdev
        return entry

    async def mkdir(self, ctx: Context, parent: Ino, name: bytes, mode: int,
                    umask: int) -> Entry:  # fmt: skip
        return self._new(parent, name, stat.S_IFDIR | (mode & ~umask & 0o7777))

    def _remove(self, parent: Ino, name: bytes, want_dir: bool) -> None:
        directory = self._dir(parent)
        ino = directory.children.get(name)
        if ino is None:
            raise FsError(errno.ENOENT)
        node = self.nodes[ino]
        if stat.S_ISDIR(node.mode) != want_dir:
            raise FsError(errno.EISDIR if not want_dir else errno.ENOTDIR)
        if want_dir and node.children:
            raise FsError(errno.ENOTEMPTY)
        del directory.children[name]
        node.nlink -= 1

    async def unlink(self, ctx: Context, parent: Ino, name: bytes) -> None:
        self._remove(parent, name, want_dir=False)

    async def rmdir(self, ctx: Context, parent: Ino, name: bytes) -> None:
        self._remove(parent, name, want_dir=True)

    async def rename(self, ctx: Context, parent: Ino, name: bytes, new_parent: Ino,
                     new_name: bytes, flags: int) -> None:  # fmt: skip
        src, dst = self._dir(parent), self._dir(new_parent)
        if name not in src.children:
            raise FsError(errno.ENOENT)
        if flags & 1 and new_name in dst.children:  # RENAME_NOREPLACE
            raise FsError(errno.EEXIST)
        ino = src.children.pop(name)
        dst.children[new_name] = ino
        self.nodes[ino].parent = new_parent

    async def link(self, ctx: Context, ino: Ino, new_parent: Ino, new_name: bytes) -> Entry:
        directory = self._dir(new_parent)
        node = self.node(ino)
        if new_name in directory.children:
            raise FsError(errno.EEXIST)
        directory.children[new_name] = ino
        node.nlink += 1
        return self._entry(ino)

    # --- files ----------------------------------------------------------------------------

    async def open(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        node = self.node(ino)
        if stat.S_ISDIR(node.mode) and flags & (os.O_WRONLY | os.O_RDWR):
            raise FsError(errno.EISDIR)
        if flags & os.O_TRUNC:
            node.data.clear()
        return Opened(self._handle(ino), keep_cache=True)

    async def create(self, ctx: Context, parent: Ino, name: bytes, mode: int, flags: int,
                     umask: int) -> tuple[Entry, Opened]:  # fmt: skip
        entry = self._new(parent, name, stat.S_IFREG | (mode & ~umask & 0o7777))
        return entry, Opened(self._handle(entry.ino), direct_io=True)

    async def tmpfile(self, ctx: Context, parent: Ino, mode: int, flags: int,
                      umask: int) -> tuple[Entry, Opened]:  # fmt: skip
        self._dir(parent)
        ino = Ino(self._next_ino)
        self._next_ino += 1
        self.nodes[ino] = Node(ino, stat.S_IFREG | (mode & ~umask & 0o7777), nlink=0,
                               parent=parent, uid=ctx.uid, gid=ctx.gid)  # fmt: skip
        return self._entry(ino), Opened(self._handle(ino), direct_io=True)

    def may_suspend(self, ino: Ino) -> bool:
        if self.claims_inline or not self.awaiting:
            return False
        return not (self.inline_root and ino == ROOT_INO)

    async def read(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                   bufs: Sequence[memoryview]) -> int:  # fmt: skip
        if self.awaiting:
            await trio.lowlevel.checkpoint()
        data = self._check_handle(ino, fh).data
        done = 0
        for buf in bufs:
            chunk = data[offset + done : offset + done + len(buf)]
            buf[: len(chunk)] = chunk
            done += len(chunk)
            if len(chunk) < len(buf):
                break
        return done

    async def write(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                    data: Sequence[memoryview], flags: int) -> int:  # fmt: skip
        node = self._check_handle(ino, fh)
        blob = b"".join(data)
        if len(node.data) < offset:
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset : offset + len(blob)] = blob
        return len(blob)

    async def flush(self, ctx: Context, ino: Ino, fh: FileHandle, lock_owner: int) -> None:
        self._check_handle(ino, fh)

    async def release(self, ctx: Context, ino: Ino, fh: FileHandle, flags: int) -> None:
        self._check_handle(ino, fh)
        del self.handles[fh]

    async def fsync(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        self._check_handle(ino, fh)

    async def fallocate(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                        length: int, mode: int) -> None:  # fmt: skip
        node = self._check_handle(ino, fh)
        if mode:
            raise FsError(errno.EOPNOTSUPP)
        end = offset + length
        if end > len(node.data):
            node.data.extend(bytes(end - len(node.data)))

    async def lseek(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                    whence: int) -> int:  # fmt: skip
        size = len(self._check_handle(ino, fh).data)
        if offset >= size:
            raise FsError(errno.ENXIO)
        return offset if whence == os.SEEK_DATA else size

    async def syncfs(self, ctx: Context, ino: Ino) -> None:
        self.calls.append("syncfs")

    # --- directories ----------------------------------------------------------------------

    async def opendir(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        self._dir(ino)
        return Opened(self._handle(ino), cache_dir=True)

    async def readdir(self, ctx: Context, ino: Ino, fh: FileHandle,
                      offset: int) -> Iterator[DirEntry]:  # fmt: skip
        directory = self._check_handle(ino, fh)
        names = [(b".", ino), (b"..", directory.parent), *directory.children.items()]
        return self._listing(names, offset)

    def _listing(self, names: list[tuple[bytes, Ino]], offset: int) -> Iterator[DirEntry]:
        for index in range(offset, len(names)):
            name, child = names[index]
            mode = self.nodes[child].mode
            yield DirEntry(child, name, stat.S_IFMT(mode) >> 12, index + 1)

    async def releasedir(self, ctx: Context, ino: Ino, fh: FileHandle) -> None:
        self._check_handle(ino, fh)
        del self.handles[fh]

    async def fsyncdir(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        self._check_handle(ino, fh)

    # --- xattrs ---------------------------------------------------------------------------

    async def setxattr(self, ctx: Context, ino: Ino, name: bytes, value: bytes,
                       flags: int) -> None:  # fmt: skip
        node = self.node(ino)
        if flags & os.XATTR_CREATE and name in node.xattrs:
            raise FsError(errno.EEXIST)
        if flags & os.XATTR_REPLACE and name not in node.xattrs:
            raise FsError(errno.ENODATA)
        node.xattrs[name] = value

    async def getxattr(self, ctx: Context, ino: Ino, name: bytes) -> bytes:
        try:
            return self.node(ino).xattrs[name]
        except KeyError:
            raise FsError(errno.ENODATA) from None

    async def listxattr(self, ctx: Context, ino: Ino) -> list[bytes]:
        return list(self.node(ino).xattrs)

    async def removexattr(self, ctx: Context, ino: Ino, name: bytes) -> None:
        if self.node(ino).xattrs.pop(name, None) is None:
            raise FsError(errno.ENODATA)
