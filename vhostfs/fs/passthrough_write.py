"""WritablePassthroughFilesystem: the passthrough filesystem with every write operation.

What Kata's shared directory needs (reference: nydusd-interface.md 1.8): the guest builds
overlayfs upper and work dirs on it, so besides ordinary files it must create whiteouts
(mknod of a 0:0 char device, or RENAME_WHITEOUT), take `trusted.overlay.*` xattrs, rename
with RENAME_NOREPLACE/EXCHANGE, and hold unix sockets (mknod S_IFSOCK).

Confinement (the same rules as the read path, see passthrough.py): every name is one
component, checked again here, and used only relative to its parent's fd, with *at calls
that never follow a trailing symlink (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, mknodat,
mkdirat, symlinkat, unlinkat, renameat2, linkat of the node's own fd). Inodes themselves are
reached through /proc/self/fd/N of their O_PATH fd: that magic link lands on the inode
itself, a symlink included, and is never resolved further. A symlink's target is stored as
the guest gave it and never followed on the host; a symlink node used as a parent is
ENOTDIR. Sizes are only changed through a real open of a regular file.

Credentials: inodes are created (create, mknod, mkdir, symlink) with the caller's fsuid,
fsgid and umask (`credentials.caller`), so the host kernel picks owner and group (setgid
directories included) and refuses what that user may not do. Everything else runs as the
daemon: the guest kernel has already checked permissions (virtio-fs mounts always use
default_permissions), and host checks without the caller's supplementary groups would
refuse legitimate requests. Fds are obtained before switching, as root, because reopening
by file handle needs CAP_DAC_READ_SEARCH.

Privilege killing (FUSE_HANDLE_KILLPRIV_V2, negotiated): the guest leaves clearing suid/sgid
to us. Writes carrying FUSE_WRITE_KILL_SUIDGID and truncates with FATTR_KILL_SUIDGID clear
S_ISUID, and S_ISGID when group-execute is set (the VFS rule); an OPEN with O_TRUNC by a
non-root caller does the same (the open_flags bit is not passed down, uid 0 stands in for
CAP_FSETID). chown clears them on the host by itself. security.capability is removed by the
host kernel on any write.

Caching: the policy's timeouts (constructor `cache`, `timeout`). `writeback=True` turns on
the guest's writeback cache as nydusd does; it is off by default because with it the host
sees data only when the guest flushes and host-side changes to sizes are ignored by the
guest. With writeback on, files are opened O_RDWR (the guest reads to fill partial pages)
and without O_APPEND (the guest computes append offsets itself).

Unnamed files (O_TMPFILE): `tmpfile` opens the parent with O_TMPFILE as the caller. Such an
inode has no name to reopen it by and, with no fd left, ceases to exist, so its node keeps
an O_PATH "anchor" fd (outside the LRU) that every reopen goes through until the guest
forgets the node or links it: `link` of any node goes through its /proc/self/fd magic link,
which for an O_TMPFILE inode opened without O_EXCL gives it a name (with O_EXCL the host
refuses, ENOENT, as the guest kernel already does). Once named, the anchor is dropped and
the node is reopened like any other (file handle, else the new parent and name).

Node bookkeeping: unlink/rmdir/rename-over detach the removed inode's (dev, ino) key from
the node table, because ext4 reuses inode numbers; rename updates the moved node's parent
and name, which the name fallback (no file handles) reopens by.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from vhostfs.errors import FsError
from vhostfs.fs import hostfd
from vhostfs.fs.credentials import caller
from vhostfs.fs.passthrough import (
    STRIP_FLAGS,
    CachePolicy,
    HostInode,
    OpenFile,
    PassthroughFilesystem,
)
from vhostfs.fuse.abi import WRITE_KILL_SUIDGID  # the writer lacks CAP_FSETID
from vhostfs.fuse.filesystem import (
    Attr,
    Context,
    Entry,
    FileHandle,
    FsOptions,
    Ino,
    Opened,
    SetAttr,
    decode_dev,
)
from vhostfs.virtio.guestbufs import IOV_MAX, split_views

RENAME_FLAGS: Final = hostfd.RENAME_NOREPLACE | hostfd.RENAME_EXCHANGE | hostfd.RENAME_WHITEOUT
XATTR_FLAGS: Final = os.XATTR_CREATE | os.XATTR_REPLACE
_PERMS: Final = 0o7777


class WritablePassthroughFilesystem(PassthroughFilesystem):
    """Serves `root` read-write (see the module docstring).

    Args:
        root: the shared directory; nothing outside it is reachable.
        cache: CachePolicy (or its value): timeouts, direct I/O, kept pages.
        writeback: let the guest cache writes (nydusd's setting); default off.
        timeout: entry/attr timeout in seconds instead of the policy's (nydusd: 5.0).
        fd_cache, file_handles: as for PassthroughFilesystem.

    Resource handling: as PassthroughFilesystem, plus one O_PATH fd per unnamed (O_TMPFILE)
    node until it is forgotten or linked; rename and link briefly dup one node fd.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        cache: CachePolicy | str = CachePolicy.AUTO,
        *,
        writeback: bool = False,
        timeout: float | None = None,
        fd_cache: int = 1024,
        file_handles: bool = True,
    ) -> None:
        super().__init__(root, cache, fd_cache=fd_cache, file_handles=file_handles,
                         timeout=timeout)  # fmt: skip
        self.writeback = writeback
        self._anchors: dict[Ino, int] = {}  # unnamed (O_TMPFILE) node -> its O_PATH fd

    async def init(self) -> FsOptions:
        opts = await super().init()
        return dataclasses.replace(opts, writeback_cache=self.writeback, killpriv_v2=True)

    # --- helpers --------------------------------------------------------------------------

    def _reopen(self, node: HostInode, flags: int = os.O_PATH) -> int:
        anchor = self._anchors.get(node.node_id)
        if anchor is None:
            return super()._reopen(node, flags)
        # An unnamed inode: its own fd is the only way back to it.
        return os.open(f"/proc/self/fd/{anchor}", flags | os.O_CLOEXEC)

    def forget(self, ino: Ino, nlookup: int) -> None:
        super().forget(ino, nlookup)
        if ino in self._anchors and not self.nodes.lookups(ino):
            os.close(self._anchors.pop(ino))  # the host frees the inode once all fds close

    def _drop_session(self) -> None:
        super()._drop_session()
        for fd in self._anchors.values():
            os.close(fd)
        self._anchors.clear()

    def _dir_node(self, ino: Ino) -> HostInode:
        node = self._node(ino)
        if node.kind != stat.S_IFDIR:
            raise FsError(errno.ENOTDIR)
        return node

    @contextmanager
    def _held(self, node: HostInode) -> Iterator[int]:
        """An fd for `node` that survives LRU evictions while a second fd is fetched."""
        if node is self.root:
            yield self.root_fd
            return
        fd = os.dup(self._fd(node))
        try:
            yield fd
        finally:
            os.close(fd)

    def _detach_if_gone(self, st: os.stat_result) -> None:
        """`st` described a name just removed; forget its key if that was its last link."""
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            self.nodes.detach((st.st_dev, st.st_ino))

    def _moved(self, st: os.stat_result, parent: HostInode, name: bytes) -> None:
        """The inode `st` now lives at parent/name (for the name fallback)."""
        ino = self.nodes.find((st.st_dev, st.st_ino))
        if ino is not None:
            node = self.nodes.get(ino)
            if node is not self.root:
                node.parent, node.name = parent, name

    def _host_flags(self, flags: int) -> int:
        """Guest open flags as the host open needs them under the cache policy."""
        if self.writeback:
            # The guest page cache reads to fill partial pages and positions appends itself.
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        return flags & ~STRIP_FLAGS

    # --- creating -------------------------------------------------------------------------

    async def create(self, ctx: Context, parent: Ino, name: bytes, mode: int, flags: int,
                     umask: int) -> tuple[Entry, Opened]:  # fmt: skip
        pnode = self._dir_node(parent)
        name = _check_name(name)
        # O_NONBLOCK: a FIFO put there by the host must not block the loop on open.
        host = self._host_flags(flags) | os.O_CREAT | (flags & os.O_EXCL) | os.O_NONBLOCK
        pfd = self._fd(pnode)
        with caller(ctx.uid, ctx.gid, umask):
            fd = hostfd.open_beneath(pfd, name, host, mode & _PERMS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FsError(errno.EEXIST, f"{name!r} exists and is not a regular file")
            if not flags & os.O_NONBLOCK:
                os.set_blocking(fd, True)
            if flags & os.O_TRUNC and ctx.uid != 0:
                _kill_suidgid(fd)
            entry = self._new_entry(pnode, name)
        except BaseException:
            os.close(fd)
            raise
        fh = self.handles.add(OpenFile(fd, self._node(entry.ino)))
        return entry, self._opened(fh)

    async def tmpfile(self, ctx: Context, parent: Ino, mode: int, flags: int,
                      umask: int) -> tuple[Entry, Opened]:  # fmt: skip
        pnode = self._dir_node(parent)
        host = (self._host_flags(flags) & ~os.O_TMPFILE) | os.O_TMPFILE | (flags & os.O_EXCL)
        pfd = self._fd(pnode)
        with caller(ctx.uid, ctx.gid, umask):
            # "." beneath the parent's fd: the directory itself, reached without a path walk.
            fd = hostfd.open_beneath(pfd, b".", host, mode & _PERMS)
        anchor = -1
        try:
            st = os.fstat(fd)
            anchor = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
            key = (st.st_dev, st.st_ino)
            # A brand-new inode: a node still keyed by this number is a stale one.
            self.nodes.detach(key)
            ino, node = self.nodes.ref(key, lambda: self._make_node(anchor, st, pnode, b""))
        except BaseException:
            os.close(fd)
            if anchor >= 0:
                os.close(anchor)
            raise
        node.node_id = ino
        self._anchors[ino] = anchor
        fh = self.handles.add(OpenFile(fd, node))
        return Entry(ino, Attr.from_stat(st), self.timeout, self.timeout), self._opened(fh)

    async def mknod(self, ctx: Context, parent: Ino, name: bytes, mode: int, rdev: int,
                    umask: int) -> Entry:  # fmt: skip
        pnode = self._dir_node(parent)
        name = _check_name(name)
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise FsError(errno.EINVAL, f"mknod of file type {kind:#o}")
        pfd = self._fd(pnode)
        with caller(ctx.uid, ctx.gid, umask):
            os.mknod(name, kind | (mode & _PERMS), decode_dev(rdev), dir_fd=pfd)
        return self._new_entry(pnode, name)

    async def mkdir(self, ctx: Context, parent: Ino, name: bytes, mode: int,
                    umask: int) -> Entry:  # fmt: skip
        pnode = self._dir_node(parent)
        name = _check_name(name)
        pfd = self._fd(pnode)
        with caller(ctx.uid, ctx.gid, umask):
            os.mkdir(name, mode & _PERMS, dir_fd=pfd)
        return self._new_entry(pnode, name)

    async def symlink(self, ctx: Context, parent: Ino, name: bytes, target: bytes) -> Entry:
        pnode = self._dir_node(parent)
        name = _check_name(name)
        if not target or b"\0" in target:
            raise FsError(errno.EINVAL)
        pfd = self._fd(pnode)
        with caller(ctx.uid, ctx.gid):
            os.symlink(target, name, dir_fd=pfd)  # stored verbatim, never resolved here
        return self._new_entry(pnode, name)

    async def link(self, ctx: Context, ino: Ino, new_parent: Ino, new_name: bytes) -> Entry:
        node = self._node(ino)
        if node.kind == stat.S_IFDIR:
            raise FsError(errno.EPERM)
        pnode = self._dir_node(new_parent)
        new_name = _check_name(new_name)
        with self._held(pnode) as pfd:
            # linkat(AT_SYMLINK_FOLLOW) of the magic link: links this very inode (a symlink
            # itself, not its target) and needs no CAP_DAC_READ_SEARCH, unlike AT_EMPTY_PATH.
            os.link(self._proc_path(node), new_name, dst_dir_fd=pfd, follow_symlinks=True)
        entry = self._new_entry(pnode, new_name)
        anchor = self._anchors.pop(ino, None)
        if anchor is not None:  # an O_TMPFILE inode got its first name: reopen by that
            node.parent, node.name = pnode, new_name
            os.close(anchor)
        return entry

    # --- removing and renaming ------------------------------------------------------------

    async def unlink(self, ctx: Context, parent: Ino, name: bytes) -> None:
        pfd = self._fd(self._dir_node(parent))
        name = _check_name(name)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        os.unlink(name, dir_fd=pfd)
        self._detach_if_gone(st)

    async def rmdir(self, ctx: Context, parent: Ino, name: bytes) -> None:
        pfd = self._fd(self._dir_node(parent))
        name = _check_name(name)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        os.rmdir(name, dir_fd=pfd)
        self._detach_if_gone(st)

    async def rename(self, ctx: Context, parent: Ino, name: bytes, new_parent: Ino,
                     new_name: bytes, flags: int) -> None:  # fmt: skip
        if flags & ~RENAME_FLAGS:
            raise FsError(errno.EINVAL, f"rename flags {flags:#x}")
        old_dir, new_dir = self._dir_node(parent), self._dir_node(new_parent)
        name, new_name = _check_name(name), _check_name(new_name)
        with self._held(old_dir) as ofd:
            nfd = self._fd(new_dir)
            src = os.stat(name, dir_fd=ofd, follow_symlinks=False)
            dst = _stat_or_none(nfd, new_name)
            hostfd.renameat2(ofd, name, nfd, new_name, flags)
        if dst is not None and (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino):
            return  # two links of one inode: POSIX says nothing happens
        self._moved(src, new_dir, new_name)
        if dst is not None and flags & hostfd.RENAME_EXCHANGE:
            self._moved(dst, old_dir, name)
        elif dst is not None:
            self._detach_if_gone(dst)

    # --- attributes -----------------------------------------------------------------------

    async def setattr(self, ctx: Context, ino: Ino, fh: FileHandle | None,
                      changes: SetAttr) -> tuple[Attr, float]:  # fmt: skip
        node = self._node(ino)
        item = self.handles.get(fh) if fh is not None else None
        path = f"/proc/self/fd/{item.fd if item is not None else self._fd(node)}"
        if changes.mode is not None:
            os.chmod(path, changes.mode & _PERMS)
        if changes.uid is not None or changes.gid is not None:
            uid = -1 if changes.uid is None else changes.uid
            os.chown(path, uid, -1 if changes.gid is None else changes.gid)
        if changes.size is not None:
            self._truncate(node, item, changes.size, changes.kill_suidgid)
        if _times_change(changes):
            hostfd.utimensat(os.fsencode(path), changes.atime_ns, changes.mtime_ns,
                             changes.atime_now, changes.mtime_now)  # fmt: skip
        # ctime cannot be set on Linux; the host moves it to now with any change above.
        return Attr.from_stat(os.stat(path)), self.timeout

    def _truncate(self, node: HostInode, item: object, size: int, kill: bool) -> None:
        """ftruncate through a real open: never a path walk, never anything but a file."""
        if node.kind != stat.S_IFREG:
            raise FsError(errno.EISDIR if node.kind == stat.S_IFDIR else errno.EINVAL)
        if isinstance(item, OpenFile) and item.fd >= 0 and _writable(item.fd):
            fd, owned = item.fd, False
        else:
            fd, owned = self._reopen(node, os.O_WRONLY), True
        try:
            os.ftruncate(fd, size)
            if kill:
                _kill_suidgid(fd)
        finally:
            if owned:
                os.close(fd)

    # --- data -----------------------------------------------------------------------------

    async def open(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        opened = await super().open(ctx, ino, self._host_flags(flags))
        if flags & os.O_TRUNC and ctx.uid != 0:
            _kill_suidgid(self._file(opened.fh).fd)
        return opened

    async def write(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                    data: Sequence[memoryview], flags: int) -> int:  # fmt: skip
        fd = self._file(fh).fd
        if flags & WRITE_KILL_SUIDGID:
            _kill_suidgid(fd)
        wanted = sum(len(d) for d in data)
        done = 0
        while done < wanted:  # straight from guest memory, no copy
            views = split_views(data, done, wanted - done)
            count = os.pwritev(fd, views[:IOV_MAX], offset + done)
            if count == 0:
                break
            done += count
        return done

    async def fallocate(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                        length: int, mode: int) -> None:  # fmt: skip
        hostfd.fallocate(self._file(fh).fd, mode, offset, length)

    async def syncfs(self, ctx: Context, ino: Ino) -> None:
        fd = os.open(f"/proc/self/fd/{self.root_fd}", os.O_RDONLY | os.O_DIRECTORY)
        try:
            hostfd.syncfs(fd)
        finally:
            os.close(fd)

    # --- xattrs ---------------------------------------------------------------------------

    async def setxattr(self, ctx: Context, ino: Ino, name: bytes, value: bytes,
                       flags: int) -> None:  # fmt: skip
        if flags & ~XATTR_FLAGS:
            raise FsError(errno.EINVAL, f"setxattr flags {flags:#x}")
        os.setxattr(self._proc_path(self._node(ino)), name, value, flags)

    async def removexattr(self, ctx: Context, ino: Ino, name: bytes) -> None:
        os.removexattr(self._proc_path(self._node(ino)), name)


def _check_name(name: bytes) -> bytes:
    """One path component; the server checks this too, the filesystem does not rely on it."""
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise FsError(errno.EINVAL, f"invalid name {name[:64]!r}")
    return name


def _stat_or_none(dirfd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _times_change(changes: SetAttr) -> bool:
    return (changes.atime_ns is not None or changes.mtime_ns is not None
            or changes.atime_now or changes.mtime_now)  # fmt: skip


def _writable(fd: int) -> bool:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


def _kill_suidgid(fd: int) -> None:
    """Clear S_ISUID, and S_ISGID if group-executable, as the VFS does on write/truncate."""
    mode = os.fstat(fd).st_mode
    new = mode & ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        new &= ~stat.S_ISGID
    if new != mode:
        os.fchmod(fd, stat.S_IMODE(new))
