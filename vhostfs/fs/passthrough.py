"""PassthroughFilesystem: a host directory served to the guest, confined to that directory.

Inode design (no fd per known inode). The guest may know far more inodes than we may hold
fds (RLIMIT_NOFILE); virtiofsd keeps an O_PATH fd for each and runs out on big trees. Here a
node is `HostInode`: the host (st_dev, st_ino) that identifies it, plus a way to reopen it:

1. a file handle (name_to_handle_at) reopened with open_by_handle_at on its mount, when the
   filesystem and our privileges allow (probed at start; per mount afterwards); or
2. its parent node and name, reopened with openat(O_NOFOLLOW) under the parent and accepted
   only if (st_dev, st_ino) still match (ESTALE otherwise).

Open O_PATH fds live in a bounded LRU (`fd_cache`), so the number of fds held for nodes is
at most `fd_cache` whatever the guest knows. Only OPEN/OPENDIR handles hold their own fds.

Confinement: names from the guest are single components (the server rejects '/', '.',
'..'); each is opened relative to its parent's fd with openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS) or openat(O_NOFOLLOW), so no symlink on the host is ever followed and
nothing outside the root is reached; symlinks are read with readlinkat, never traversed.
File handles are only ever made from inodes reached that way.

Blocking: every syscall runs inline on the event loop (metadata calls take microseconds and
reads usually hit the page cache); no method awaits, so requests are never interleaved
mid-operation. This class answers no write operation (ENOSYS); cli wraps it in
ReadOnlyFilesystem. `passthrough_write.WritablePassthroughFilesystem` adds the writes.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Final

from vhostfs.errors import FsError
from vhostfs.fs import hostfd
from vhostfs.fs.dirstream import DirStream
from vhostfs.fs.inodes import HandleTable, InodeTable
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
    StatFs,
    from_fields,
)
from vhostfs.offload import read_into

# Open flags a guest may not pass through: creation is a separate op, O_DIRECT needs
# aligned buffers guest memory does not promise, O_NOFOLLOW is meaningless on a reopen.
STRIP_FLAGS: Final = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT | os.O_NOFOLLOW


class CachePolicy(enum.Enum):
    """How long the guest may cache, like virtiofsd's cache= option."""

    NONE = "none"  # 0 s timeouts and direct I/O: every access asks the host
    AUTO = "auto"  # 1 s timeouts, page cache revalidated on open
    ALWAYS = "always"  # a day; cached pages kept across opens

    @property
    def timeout(self) -> float:
        return {"none": 0.0, "auto": 1.0, "always": 86400.0}[self.value]


Key = tuple[int, int]  # host (st_dev, st_ino)


@dataclasses.dataclass(slots=True, eq=False)
class HostInode:
    """A host inode the guest knows, and how to reopen it without holding an fd."""

    dev: int
    ino: int
    kind: int  # S_IFMT bits
    parent: HostInode | None  # for the name fallback; None for the root
    name: bytes
    handle: bytes | None  # name_to_handle_at result, when usable
    mount_id: int
    node_id: Ino = ROOT_INO


class OpenFile:
    __slots__ = ("fd", "node")

    def __init__(self, fd: int, node: HostInode) -> None:
        self.fd = fd
        self.node = node


class PassthroughFilesystem(Filesystem):
    """Serves the directory tree under `root` (see the module docstring).

    Resource handling: holds the root's fds, one fd per mount seen (for open_by_handle_at),
    at most `fd_cache` O_PATH fds for nodes, and one or two fds per open handle. `close`
    releases all of them; `destroy` releases everything but the root and mount fds.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        cache: CachePolicy | str = CachePolicy.AUTO,
        *,
        fd_cache: int = 1024,
        file_handles: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.policy = CachePolicy(cache)
        # Entry/attr timeout in seconds; the policy's unless given (nydusd uses 5 s).
        self.timeout = self.policy.timeout if timeout is None else timeout
        self.fd_cache_size = max(4, fd_cache)
        self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._mount_fds: dict[int, int] = {}
        st = os.fstat(self.root_fd)
        root_node = HostInode(st.st_dev, st.st_ino, stat.S_IFDIR, None, b"", None, -1)
        self.use_handles = file_handles and self._init_handles(root_node)
        self.nodes: InodeTable[Key, HostInode] = InodeTable((st.st_dev, st.st_ino), root_node)
        self.root = root_node
        self.handles: HandleTable[OpenFile | DirStream] = HandleTable()
        self.fd_cache: OrderedDict[Ino, int] = OrderedDict()

    def _init_handles(self, root: HostInode) -> bool:
        """Whether file handles work here (privilege, filesystem support); keeps a mount fd."""
        mount_fd = os.open(f"/proc/self/fd/{self.root_fd}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            handle, mount_id = hostfd.name_to_handle(self.root_fd)
            os.close(hostfd.open_by_handle(mount_fd, handle, os.O_PATH))
        except OSError:
            os.close(mount_fd)
            return False
        root.mount_id = mount_id
        self._mount_fds[mount_id] = mount_fd
        return True

    def close(self) -> None:
        """Release every fd (the filesystem is not used afterwards)."""
        self._drop_session()
        for fd in self._mount_fds.values():
            os.close(fd)
        self._mount_fds.clear()
        os.close(self.root_fd)

    # --- node fds -------------------------------------------------------------------------

    def _fd(self, node: HostInode) -> int:
        """An O_PATH fd for `node`, from the LRU or reopened (owned by the LRU)."""
        if node is self.root:
            return self.root_fd
        cache = self.fd_cache
        fd = cache.get(node.node_id)
        if fd is not None:
            cache.move_to_end(node.node_id)
            return fd
        fd = self._reopen(node)
        self._cache_fd(node.node_id, fd)
        return fd

    def _cache_fd(self, node_id: Ino, fd: int) -> None:
        cache = self.fd_cache
        cache[node_id] = fd
        if len(cache) > self.fd_cache_size:
            _, old = cache.popitem(last=False)
            os.close(old)

    def _uncache_fd(self, node_id: Ino) -> None:
        fd = self.fd_cache.pop(node_id, None)
        if fd is not None:
            os.close(fd)

    def _reopen(self, node: HostInode, flags: int = os.O_PATH) -> int:
        """A new fd for `node` with `flags` (caller owns it); ESTALE if it is gone."""
        if node is self.root:
            return os.open(f"/proc/self/fd/{self.root_fd}", flags | os.O_CLOEXEC)
        if node.handle is not None:
            return hostfd.open_by_handle(self._mount_fds[node.mount_id], node.handle, flags)
        if flags & os.O_PATH and node.parent is not None:
            fd = hostfd.open_beneath(self._fd(node.parent), node.name, flags)
        else:  # reopen through the O_PATH fd, never through the name again
            fd = os.open(f"/proc/self/fd/{self._fd(node)}", flags | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (node.dev, node.ino):
            os.close(fd)
            raise FsError(errno.ESTALE, f"{node.name!r} was replaced on the host")
        return fd

    def _node(self, ino: Ino) -> HostInode:
        return self.nodes.get(ino)

    def _make_node(self, fd: int, st: os.stat_result, parent: HostInode,
                   name: bytes) -> HostInode:  # fmt: skip
        node = HostInode(st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), parent, name, None, -1)
        if self.use_handles:
            try:
                handle, mount_id = hostfd.name_to_handle(fd)
                if mount_id in self._mount_fds or self._add_mount(mount_id, fd, st):
                    node.handle, node.mount_id = handle, mount_id
            except OSError:
                pass  # this filesystem exports no handles: the name fallback works
        return node

    def _add_mount(self, mount_id: int, fd: int, st: os.stat_result) -> bool:
        """Keep an fd for a newly seen mount (a submount root directory)."""
        if not stat.S_ISDIR(st.st_mode):
            return False
        self._mount_fds[mount_id] = os.open(
            f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        )
        return True

    def _new_entry(self, parent: HostInode, name: bytes) -> Entry:
        """Look `name` up under `parent` and count one guest reference to its node."""
        return self._entry_at(self._fd(parent), parent, name)

    def _entry_at(self, pfd: int, parent: HostInode, name: bytes) -> Entry:
        """`_new_entry` with the parent's fd in hand (a listing looks up many names in one).

        A single component with AT_SYMLINK_NOFOLLOW cannot leave the parent, so a name whose
        inode is already known needs only the fstatat; new inodes are opened (beneath the
        parent, no symlinks) to get a file handle and an fd for the LRU.
        """
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        ino = self.nodes.ref_known((st.st_dev, st.st_ino))
        if ino is not None:
            return from_fields(Entry, (ino, Attr.from_stat(st), self.timeout, self.timeout, 0))
        return self._new_node_entry(pfd, parent, name)

    def _new_node_entry(self, pfd: int, parent: HostInode, name: bytes) -> Entry:
        """`_entry_at` for a name whose inode the guest does not know (yet)."""
        fd = hostfd.open_beneath(pfd, name, os.O_PATH)
        try:
            st = os.fstat(fd)
            ino, node = self.nodes.ref((st.st_dev, st.st_ino),
                                       lambda: self._make_node(fd, st, parent, name))  # fmt: skip
        except BaseException:
            os.close(fd)
            raise
        node.node_id = ino
        if ino in self.fd_cache:
            os.close(fd)
        else:
            self._cache_fd(ino, fd)
        return Entry(ino, Attr.from_stat(st), self.timeout, self.timeout)

    # --- session --------------------------------------------------------------------------

    async def init(self) -> FsOptions:
        self._drop_session()
        return FsOptions(readdirplus=self.policy is not CachePolicy.NONE)

    async def destroy(self) -> None:
        self._drop_session()

    def _drop_session(self) -> None:
        for item in self.handles.clear():
            _close(item)
        self.nodes.clear()
        for fd in self.fd_cache.values():
            os.close(fd)
        self.fd_cache.clear()

    # --- metadata -------------------------------------------------------------------------

    def may_suspend(self, ino: Ino) -> bool:
        return False  # every operation is a few synchronous syscalls

    async def lookup(self, ctx: Context, parent: Ino, name: bytes) -> Entry:
        if not name or b"/" in name or name in (b".", b".."):
            raise FsError(errno.EINVAL)
        return self._new_entry(self._node(parent), name)

    def forget(self, ino: Ino, nlookup: int) -> None:
        if self.nodes.forget(ino, nlookup) is not None:
            self._uncache_fd(ino)

    async def getattr(self, ctx: Context, ino: Ino, fh: FileHandle | None) -> tuple[Attr, float]:
        item = self.handles.get(fh) if fh is not None else None
        fd = item.fd if item is not None else self._fd(self._node(ino))
        return Attr.from_stat(os.fstat(fd)), self.timeout

    async def readlink(self, ctx: Context, ino: Ino) -> bytes:
        node = self._node(ino)
        if node.kind != stat.S_IFLNK:
            raise FsError(errno.EINVAL)
        return os.readlink(b"", dir_fd=self._fd(node))

    async def statfs(self, ctx: Context, ino: Ino) -> StatFs:
        st = os.statvfs(self._fd(self._node(ino)))
        return StatFs(st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
                      st.f_bsize, st.f_namemax, st.f_frsize)  # fmt: skip

    async def access(self, ctx: Context, ino: Ino, mask: int) -> None:
        if not os.access(self._proc_path(self._node(ino)), mask):
            raise FsError(errno.EACCES)

    def _proc_path(self, node: HostInode) -> str:
        """A path that reaches exactly this inode (the magic link of its O_PATH fd)."""
        return f"/proc/self/fd/{self._fd(node)}"

    # --- files ----------------------------------------------------------------------------

    async def open(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        node = self._node(ino)
        if node.kind != stat.S_IFREG:
            raise FsError(errno.ELOOP if node.kind == stat.S_IFLNK else errno.EACCES)
        fd = self._reopen(node, (flags & ~STRIP_FLAGS) | os.O_CLOEXEC)
        return self._opened(self.handles.add(OpenFile(fd, node)))

    def _opened(self, fh: FileHandle) -> Opened:
        return Opened(fh, direct_io=self.policy is CachePolicy.NONE,
                      keep_cache=self.policy is CachePolicy.ALWAYS)  # fmt: skip

    def _file(self, fh: FileHandle) -> OpenFile:
        item = self.handles.get(fh)
        if not isinstance(item, OpenFile):
            raise FsError(errno.EBADF)
        return item

    async def read(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                   bufs: Sequence[memoryview]) -> int:  # fmt: skip
        return await read_into(self._file(fh).fd, bufs, offset)

    async def flush(self, ctx: Context, ino: Ino, fh: FileHandle, lock_owner: int) -> None:
        # Closing a duplicate runs the host's flush-on-close (NFS, POSIX lock release).
        os.close(os.dup(self._file(fh).fd))

    async def release(self, ctx: Context, ino: Ino, fh: FileHandle, flags: int) -> None:
        _close(self.handles.pop(fh))

    async def fsync(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        fd = self._file(fh).fd
        (os.fdatasync if datasync else os.fsync)(fd)

    async def lseek(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                    whence: int) -> int:  # fmt: skip
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise FsError(errno.EINVAL)
        return os.lseek(self._file(fh).fd, offset, whence)

    # --- directories ----------------------------------------------------------------------

    async def opendir(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        node = self._node(ino)
        if node.kind != stat.S_IFDIR:
            raise FsError(errno.ENOTDIR)
        fd = self._reopen(node, os.O_RDONLY | os.O_DIRECTORY)
        # Never reveal anything above the root: its ".." is itself.
        parent = node.parent if node.parent is not None else node
        stream = DirStream(fd, node.ino, parent.ino)
        return Opened(self.handles.add(stream), cache_dir=self.policy is CachePolicy.ALWAYS)

    def _dir(self, fh: FileHandle) -> DirStream:
        item = self.handles.get(fh)
        if not isinstance(item, DirStream):
            raise FsError(errno.EBADF)
        return item

    async def readdir(self, ctx: Context, ino: Ino, fh: FileHandle,
                      offset: int) -> Iterator[DirEntry]:  # fmt: skip
        return self._dir(fh).entries(offset)

    async def readdirplus(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                          out: PlusListing) -> bool:  # fmt: skip
        """Each listed name looked up as `lookup` does, minus the name checks a name fresh
        from the host directory does not need; a known inode costs one fstatat."""
        parent = self._node(ino)
        pfd = self._fd(parent)
        nodes, timeout, add_stat = self.nodes, self.timeout, out.add_stat
        # Entries that do not fit stay in the stream for the guest's next request.
        for d in out.fitting(self._dir(fh).take(offset, out.most())):
            name = d.name
            if name in _DOTS:
                if not out.add(d, None):
                    break
                continue
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed on the host since it was listed
            node = nodes.ref_known((st.st_dev, st.st_ino))
            if node is not None:
                if not add_stat(d, node, st, timeout):
                    self.forget(node, 1)
                    break
            else:
                entry = self._new_node_entry(pfd, parent, name)
                if not out.add(d, entry):
                    self.forget(entry.ino, 1)
                    break
        return True

    async def releasedir(self, ctx: Context, ino: Ino, fh: FileHandle) -> None:
        _close(self.handles.pop(fh))

    async def fsyncdir(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        fd = self._dir(fh).fd
        (os.fdatasync if datasync else os.fsync)(fd)

    # --- xattrs ---------------------------------------------------------------------------
    # Through /proc/self/fd/N of the node's O_PATH fd: following that magic link lands on
    # the inode itself, also for symlinks and special files, which cannot be opened.

    async def getxattr(self, ctx: Context, ino: Ino, name: bytes) -> bytes:
        return os.getxattr(self._proc_path(self._node(ino)), name)

    async def listxattr(self, ctx: Context, ino: Ino) -> list[bytes]:
        names = [os.fsencode(n) for n in os.listxattr(self._proc_path(self._node(ino)))]
        if ctx.uid != 0:
            # We list as root, so the host shows trusted.*; a local filesystem lists those
            # only to CAP_SYS_ADMIN (the guest's overlayfs, which keeps its own there, runs
            # as root). Reading one is refused by the guest kernel itself.
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names


_DOTS = (b".", b"..")


def _close(item: OpenFile | DirStream) -> None:
    if isinstance(item, DirStream):
        item.close()
    else:
        os.close(item.fd)
