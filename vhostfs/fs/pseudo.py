"""The virtio-fs root as nydusd shapes it: a pseudo tree with filesystems attached at runtime.

reference/nydusd-interface.md section 1.8. Kata mounts the sandbox's shared directory at
`/containers` and each container's image at `/rafs/<cid>/lowerdir` through the HTTP API while
the guest runs; attaching creates the intermediate pseudo directories.

Node ids. Each attached filesystem gets an index 1..255 and keeps its own node ids; the
guest sees `index << 56 | inner id` (nydusd's scheme), and the pseudo directories use index 0.
Attribute inode numbers are encoded the same way, so st_ino never collides across mounts.
Detaching a filesystem frees its index; freed indexes are reused oldest-first, so a stale
node id the guest still holds names a detached index (ENOENT/ESTALE) for as long as possible.
Requests for one attached filesystem never touch another, so detaching one leaves the others
undisturbed.

The pseudo tree itself changes at runtime, so the guest may not cache its entries (timeouts
0); what the attached filesystems say about their own entries passes through unchanged.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

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
    PlusListing,
    SetAttr,
    StatFs,
)

SHIFT: Final = 56
INNER_MASK: Final = (1 << SHIFT) - 1
MAX_MOUNTS: Final = 255


def split_ino(ino: int) -> tuple[int, Ino]:
    return ino >> SHIFT, Ino(ino & INNER_MASK)


def join_ino(index: int, inner: int) -> Ino:
    return Ino(index << SHIFT | (inner & INNER_MASK))


@dataclass
class PseudoDir:
    ino: Ino
    parent: Ino
    children: dict[bytes, Ino | Mount] = field(default_factory=dict)


@dataclass
class Mount:
    index: int
    path: str
    fs: Filesystem
    kind: str  # "Rafs" or "PassthroughFs" (nydusd's backend_type)
    mounted_at: float = field(default_factory=time.time)
    parent: Ino = ROOT_INO

    @property
    def root(self) -> Ino:
        return join_ino(self.index, ROOT_INO)


# The per-node operations a filesystem attached at "/" answers in the pseudo root's place.
# (`may_suspend` stays the pseudo root's: one flag test when nothing attached awaits.)
_ROOT_FS_OPERATIONS: Final = (
    "lookup", "forget", "batch_forget", "getattr", "setattr", "readlink",
    "symlink", "mknod", "mkdir", "unlink", "rmdir", "rename", "link", "open", "create",
    "tmpfile", "read", "write", "flush", "release", "fsync", "opendir", "readdir",
    "readdirplus", "releasedir", "fsyncdir", "statfs", "setxattr", "getxattr", "listxattr",
    "removexattr", "access", "fallocate", "lseek", "syncfs",
)  # fmt: skip


class PseudoFilesystem(Filesystem):
    """Routes every request to the attached filesystem that owns its node id.

    A filesystem attached at "/" is the whole export (nothing else can be attached beside
    it) and keeps its own node ids, so routing has nothing to do: while it is attached, its
    per-node methods are bound onto this object (`_bind_root`), and requests reach it
    without a routing frame (LOOKUP+GETATTR at the socket: +10%). Session start and end
    (`init`, `destroy`) stay the pseudo root's own.
    """

    def __init__(self, options: FsOptions | None = None) -> None:
        self.options = options or FsOptions()
        self._dirs: dict[Ino, PseudoDir] = {ROOT_INO: PseudoDir(ROOT_INO, ROOT_INO)}
        self._next_dir = 2
        self.mounts: dict[str, Mount] = {}
        self._by_index: dict[int, Mount] = {}
        self._free: deque[int] = deque(range(1, MAX_MOUNTS + 1))
        self._started = time.time()
        # Whether some attached filesystem may await (may_suspend of its root stands for the
        # whole filesystem); kept on attach/detach so the common case costs one test.
        self._any_may_suspend = False

    # -- attaching -----------------------------------------------------------------------

    async def attach(self, path: str, fs: Filesystem, kind: str) -> Mount:
        """Attach `fs` at `path` ("/" included); FsError(EEXIST) if something is there."""
        parts = _parts(path)
        if path_key(path) in self.mounts or self._root_mount() is not None:
            raise FsError(errno.EEXIST, "object or filesystem already exists")
        if not self._free:
            raise FsError(errno.ENOSPC, f"at most {MAX_MOUNTS} filesystems can be attached")
        parent = self._dirs[ROOT_INO]
        for name in parts[:-1]:
            child = parent.children.get(name)
            if isinstance(child, Mount):
                raise FsError(errno.EEXIST, f"{path}: a filesystem is attached above it")
            parent = self._dirs[child] if child is not None else self._mkdir(parent, name)
        if parts and parts[-1] in parent.children:
            raise FsError(errno.EEXIST, "object or filesystem already exists")
        if not parts and (parent.children or self.mounts):
            raise FsError(errno.EEXIST, "object or filesystem already exists")
        mount = Mount(self._free.popleft(), path_key(path), fs, kind, parent=parent.ino)
        await fs.init()
        self.mounts[mount.path] = mount
        self._by_index[mount.index] = mount
        self._any_may_suspend = self._any_may_suspend or fs.may_suspend(ROOT_INO)
        if parts:
            parent.children[parts[-1]] = mount
        self._bind_root()
        return mount

    async def detach(self, path: str) -> Mount:
        """Detach what is at `path`; FsError(ENOENT) if nothing is."""
        mount = self.mounts.pop(path_key(path), None)
        if mount is None:
            raise FsError(errno.ENOENT, "object or filesystem doesn't exist")
        del self._by_index[mount.index]
        self._any_may_suspend = any(m.fs.may_suspend(ROOT_INO) for m in self.mounts.values())
        parts = _parts(mount.path)
        if parts:
            del self._dirs[mount.parent].children[parts[-1]]
        self._free.append(mount.index)
        self._bind_root()
        await mount.fs.destroy()
        return mount

    def _bind_root(self) -> None:
        """Serve straight from a filesystem attached at "/", or route again (class doc)."""
        for name in _ROOT_FS_OPERATIONS:
            self.__dict__.pop(name, None)
        root = self._root_mount()
        if root is not None and len(self.mounts) == 1:
            for name in _ROOT_FS_OPERATIONS:
                setattr(self, name, getattr(root.fs, name))

    def _mkdir(self, parent: PseudoDir, name: bytes) -> PseudoDir:
        directory = PseudoDir(Ino(self._next_dir), parent.ino)
        self._next_dir += 1
        self._dirs[directory.ino] = directory
        parent.children[name] = directory.ino
        return directory

    def _root_mount(self) -> Mount | None:
        return self.mounts.get("/")

    # -- routing -------------------------------------------------------------------------

    def _route(self, ino: Ino) -> tuple[Filesystem, int, Ino] | None:
        """(fs, index, inner ino) for an attached filesystem's node; None for pseudo dirs."""
        index, inner = split_ino(ino)
        if index == 0:
            root = self._root_mount()
            if root is not None:  # a filesystem attached at "/" replaces the pseudo tree
                return root.fs, root.index, inner
            if ino not in self._dirs:
                raise FsError(errno.ENOENT)
            return None
        mount = self._by_index.get(index)
        if mount is None:
            raise FsError(errno.ESTALE, "the filesystem of this node was detached")
        return mount.fs, index, inner

    def _outer(self, index: int, inner: int) -> Ino:
        root = self._root_mount()
        if root is not None and root.index == index:
            return Ino(inner)  # the root filesystem keeps its own numbers, root stays 1
        return join_ino(index, inner)

    def _keeps_numbers(self, index: int) -> bool:
        """Whether mount `index` is attached at "/": its node numbers pass unchanged, so
        its replies need no rewriting (the hot path of a plain --shared-dir export)."""
        root = self.mounts.get("/")
        return root is not None and root.index == index

    def _entry(self, index: int, entry: Entry) -> Entry:
        if entry.ino == 0 or self._keeps_numbers(index):
            return entry
        attr = _with_ino(entry.attr, self._outer(index, entry.attr.ino))
        return Entry(self._outer(index, entry.ino), attr, entry.entry_timeout,
                     entry.attr_timeout, entry.generation)  # fmt: skip

    def _dir_attr(self, ino: Ino) -> Attr:
        now = int(self._started)
        return Attr(ino, 4096, 8, now, now, now, 0, 0, 0, stat.S_IFDIR | 0o755, 2, 0, 0, 0)

    # -- the operations -------------------------------------------------------------------

    async def init(self) -> FsOptions:
        root = self._root_mount()
        if root is not None:
            # A filesystem attached at "/" is the whole export: its wishes (a cache=none
            # passthrough wants no READDIRPLUS, for one) decide the session.
            return await root.fs.init()
        return self.options

    async def destroy(self) -> None:
        for mount in list(self.mounts.values()):
            await mount.fs.destroy()
            await mount.fs.init()  # attached filesystems stay attached across sessions

    async def lookup(self, ctx: Context, parent: Ino, name: bytes) -> Entry:
        route = self._route(parent)
        if route is not None:
            fs, index, inner = route
            return self._entry(index, await fs.lookup(ctx, inner, name))
        directory = self._dirs[parent]
        if name in (b".", b".."):
            target = parent if name == b"." else directory.parent
            return Entry(target, self._dir_attr(target), 0.0, 0.0)
        child = directory.children.get(name)
        if child is None:
            raise FsError(errno.ENOENT)
        if isinstance(child, Mount):
            attr, _ = await child.fs.getattr(ctx, ROOT_INO, None)
            return Entry(child.root, _with_ino(attr, child.root), 0.0, 0.0)
        return Entry(child, self._dir_attr(child), 0.0, 0.0)

    def may_suspend(self, ino: Ino) -> bool:
        if not self._any_may_suspend:
            return False  # every attached filesystem serves inline: no routing needed
        try:
            route = self._route(ino)
        except FsError:
            return False  # answered with an error at once
        if route is not None:
            fs, _, inner = route
            return fs.may_suspend(inner)
        # A pseudo directory: looking up a mount point asks that filesystem for its root.
        return any(mount.fs.may_suspend(ROOT_INO) for mount in self.mounts.values())

    def forget(self, ino: Ino, nlookup: int) -> None:
        index, inner = split_ino(ino)
        mount = self._by_index.get(index) if index else self._root_mount()
        if mount is not None:
            mount.fs.forget(inner, nlookup)

    async def getattr(self, ctx: Context, ino: Ino, fh: FileHandle | None) -> tuple[Attr, float]:
        route = self._route(ino)
        if route is None:
            return self._dir_attr(ino), 0.0
        fs, index, inner = route
        attr, timeout = await fs.getattr(ctx, inner, fh)
        if self._keeps_numbers(index):
            return attr, timeout
        return _with_ino(attr, self._outer(index, attr.ino)), timeout

    async def setattr(
        self, ctx: Context, ino: Ino, fh: FileHandle | None, changes: SetAttr
    ) -> tuple[Attr, float]:
        fs, index, inner = self._attached(ino)
        attr, timeout = await fs.setattr(ctx, inner, fh, changes)
        if self._keeps_numbers(index):
            return attr, timeout
        return _with_ino(attr, self._outer(index, attr.ino)), timeout

    def _attached(self, ino: Ino) -> tuple[Filesystem, int, Ino]:
        route = self._route(ino)
        if route is None:
            raise FsError(errno.EROFS, "the pseudo tree is read-only")
        return route

    async def readlink(self, ctx: Context, ino: Ino) -> bytes:
        fs, _, inner = self._attached(ino)
        return await fs.readlink(ctx, inner)

    async def symlink(self, ctx: Context, parent: Ino, name: bytes, target: bytes) -> Entry:
        fs, index, inner = self._attached(parent)
        return self._entry(index, await fs.symlink(ctx, inner, name, target))

    async def mknod(
        self, ctx: Context, parent: Ino, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        fs, index, inner = self._attached(parent)
        return self._entry(index, await fs.mknod(ctx, inner, name, mode, rdev, umask))

    async def mkdir(self, ctx: Context, parent: Ino, name: bytes, mode: int, umask: int) -> Entry:
        fs, index, inner = self._attached(parent)
        return self._entry(index, await fs.mkdir(ctx, inner, name, mode, umask))

    async def unlink(self, ctx: Context, parent: Ino, name: bytes) -> None:
        fs, _, inner = self._attached(parent)
        await fs.unlink(ctx, inner, name)

    async def rmdir(self, ctx: Context, parent: Ino, name: bytes) -> None:
        fs, _, inner = self._attached(parent)
        await fs.rmdir(ctx, inner, name)

    async def rename(
        self, ctx: Context, parent: Ino, name: bytes, new_parent: Ino, new_name: bytes, flags: int
    ) -> None:
        fs, index, inner = self._attached(parent)
        _, new_index, new_inner = self._attached(new_parent)
        if new_index != index:
            raise FsError(errno.EXDEV)
        await fs.rename(ctx, inner, name, new_inner, new_name, flags)

    async def link(self, ctx: Context, ino: Ino, new_parent: Ino, new_name: bytes) -> Entry:
        fs, index, inner = self._attached(ino)
        _, new_index, new_inner = self._attached(new_parent)
        if new_index != index:
            raise FsError(errno.EXDEV)
        return self._entry(index, await fs.link(ctx, inner, new_inner, new_name))

    async def open(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        fs, _, inner = self._attached(ino)
        return await fs.open(ctx, inner, flags)

    async def create(
        self, ctx: Context, parent: Ino, name: bytes, mode: int, flags: int, umask: int
    ) -> tuple[Entry, Opened]:
        fs, index, inner = self._attached(parent)
        entry, opened = await fs.create(ctx, inner, name, mode, flags, umask)
        return self._entry(index, entry), opened

    async def tmpfile(
        self, ctx: Context, parent: Ino, mode: int, flags: int, umask: int
    ) -> tuple[Entry, Opened]:
        fs, index, inner = self._attached(parent)
        entry, opened = await fs.tmpfile(ctx, inner, mode, flags, umask)
        return self._entry(index, entry), opened

    async def read(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, bufs: Sequence[memoryview]
    ) -> int:
        fs, _, inner = self._attached(ino)
        return await fs.read(ctx, inner, fh, offset, bufs)

    async def write(
        self,
        ctx: Context,
        ino: Ino,
        fh: FileHandle,
        offset: int,
        data: Sequence[memoryview],
        flags: int,
    ) -> int:
        fs, _, inner = self._attached(ino)
        return await fs.write(ctx, inner, fh, offset, data, flags)

    async def flush(self, ctx: Context, ino: Ino, fh: FileHandle, lock_owner: int) -> None:
        fs, _, inner = self._attached(ino)
        await fs.flush(ctx, inner, fh, lock_owner)

    async def release(self, ctx: Context, ino: Ino, fh: FileHandle, flags: int) -> None:
        route = self._route(ino)
        if route is not None:
            fs, _, inner = route
            await fs.release(ctx, inner, fh, flags)

    async def fsync(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        fs, _, inner = self._attached(ino)
        await fs.fsync(ctx, inner, fh, datasync)

    async def opendir(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        route = self._route(ino)
        if route is None:
            return Opened(FileHandle(0))
        fs, _, inner = route
        return await fs.opendir(ctx, inner, flags)

    async def readdirplus(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, out: PlusListing
    ) -> bool:
        route = self._route(ino)
        if route is None:
            return False  # a pseudo directory: the server looks its few entries up
        fs, index, inner = route
        if not self._keeps_numbers(index):
            out = _OuterListing(self, index, out)
        return await fs.readdirplus(ctx, inner, fh, offset, out)

    async def readdir(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int
    ) -> Iterator[DirEntry]:
        route = self._route(ino)
        if route is not None:
            fs, index, inner = route
            entries = await fs.readdir(ctx, inner, fh, offset)
            if self._keeps_numbers(index):
                return entries
            return (DirEntry(self._outer(index, e.ino), e.name, e.type, e.offset) for e in entries)
        directory = self._dirs[ino]
        listing = [(b".", ino), (b"..", directory.parent)]
        for name, child in directory.children.items():
            listing.append((name, child.root if isinstance(child, Mount) else child))
        return (
            DirEntry(child_ino, name, stat.S_IFDIR >> 12, position + 1)
            for position, (name, child_ino) in enumerate(listing)
            if position >= offset
        )

    async def releasedir(self, ctx: Context, ino: Ino, fh: FileHandle) -> None:
        route = self._route(ino)
        if route is not None:
            fs, _, inner = route
            await fs.releasedir(ctx, inner, fh)

    async def fsyncdir(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        route = self._route(ino)
        if route is not None:
            fs, _, inner = route
            await fs.fsyncdir(ctx, inner, fh, datasync)

    async def statfs(self, ctx: Context, ino: Ino) -> StatFs:
        route = self._route(ino)
        if route is None:
            return StatFs(0, 0, 0, len(self._dirs), 0, 4096, 255, 4096)
        fs, _, inner = route
        return await fs.statfs(ctx, inner)

    async def setxattr(self, ctx: Context, ino: Ino, name: bytes, value: bytes, flags: int) -> None:
        fs, _, inner = self._attached(ino)
        await fs.setxattr(ctx, inner, name, value, flags)

    async def getxattr(self, ctx: Context, ino: Ino, name: bytes) -> bytes:
        route = self._route(ino)
        if route is None:
            raise FsError(errno.ENODATA)
        fs, _, inner = route
        return await fs.getxattr(ctx, inner, name)

    async def listxattr(self, ctx: Context, ino: Ino) -> list[bytes]:
        route = self._route(ino)
        if route is None:
            return []
        fs, _, inner = route
        return await fs.listxattr(ctx, inner)

    async def removexattr(self, ctx: Context, ino: Ino, name: bytes) -> None:
        fs, _, inner = self._attached(ino)
        await fs.removexattr(ctx, inner, name)

    async def access(self, ctx: Context, ino: Ino, mask: int) -> None:
        route = self._route(ino)
        if route is not None:
            fs, _, inner = route
            await fs.access(ctx, inner, mask)

    async def fallocate(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, length: int, mode: int
    ) -> None:
        fs, _, inner = self._attached(ino)
        await fs.fallocate(ctx, inner, fh, offset, length, mode)

    async def lseek(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, whence: int) -> int:
        fs, _, inner = self._attached(ino)
        return await fs.lseek(ctx, inner, fh, offset, whence)

    async def syncfs(self, ctx: Context, ino: Ino) -> None:
        for mount in list(self.mounts.values()):
            await mount.fs.syncfs(ctx, ROOT_INO)


def _with_ino(attr: Attr, ino: int) -> Attr:
    return attr._replace(ino=ino)


def path_key(path: str) -> str:
    """The canonical form of a mountpoint ("/a/b", "/" for the root)."""
    return "/" + "/".join(p.decode() for p in _parts(path))


def _parts(path: str) -> list[bytes]:
    if not path.startswith("/"):
        raise FsError(errno.EINVAL, f"mountpoint {path!r} is not absolute")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise FsError(errno.EINVAL, f"mountpoint {path!r} contains . or ..")
    return [p.encode() for p in parts]


class _OuterListing:
    """A mount's READDIRPLUS listing passed on with the mount's node numbers made ours."""

    __slots__ = ("_index", "_out", "_root")

    def __init__(self, root: PseudoFilesystem, index: int, out: PlusListing) -> None:
        self._root, self._index, self._out = root, index, out

    def most(self) -> int:
        return self._out.most()

    def fitting(self, entries: list[DirEntry]) -> list[DirEntry]:
        return self._out.fitting(entries)  # the names, and so the sizes, stay the same

    def add(self, entry: DirEntry, looked_up: Entry | None) -> bool:
        root, index = self._root, self._index
        outer = DirEntry(root._outer(index, entry.ino), entry.name, entry.type, entry.offset)
        return self._out.add(outer, None if looked_up is None else root._entry(index, looked_up))

    def add_stat(self, entry: DirEntry, node: Ino, st: os.stat_result, timeout: float) -> bool:
        return self.add(entry, Entry(node, Attr.from_stat(st), timeout, timeout))
