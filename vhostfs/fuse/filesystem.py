"""The filesystem interface: what the FUSE server asks of RAFS, passthrough and the pseudo fs.

The per-request records (Attr, Entry, Opened, DirEntry) are NamedTuples rather than frozen
dataclasses: they are built several times per request on the hot path, and a frozen
dataclass costs about 1.6 us to construct where a NamedTuple costs 0.27 us.

One method per FUSE operation, with neutral Python types instead of wire structs, so that a
filesystem never sees protocol bytes and the server never sees filesystem internals.
`Filesystem` is the base class: every operation defaults to ENOSYS, so a filesystem
implements what it supports and nothing else. `ReadOnlyFilesystem` wraps any filesystem and
answers EROFS to everything that would modify it.

Contracts (the same as the kernel's, see linux/include/uapi/linux/fuse.h):

* Node ids (`Ino`) are chosen by the filesystem; 1 is the root. Every `Entry` with a non-zero
  `ino` returned by lookup, create, mknod, mkdir, symlink or link adds one to that node's
  lookup count; `forget(ino, n)` takes `n` away, and at zero the filesystem may drop the node.
  For READDIRPLUS the server calls `lookup` once per entry it sends, unless the filesystem
  lists entries with their lookups done (`readdirplus`); readdir never changes lookup counts.
* `Attr.ino` is the inode number the guest sees in st_ino; it need not equal the node id.
* Errors: raise `FsError(errno)` (or an exception carrying an `errno` attribute, such as
  OSError or RafsError). The server turns it into the reply; nothing else does.
* Cancellation: every async method may be cancelled when its queue stops (guest reset);
  it must leave the filesystem consistent when that happens.
* Buffers passed to `read`/`write` point into guest memory and are valid only until the
  method returns: never keep them.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, NewType, Protocol, TypeAlias, cast

from vhostfs.errors import not_supported, read_only

Ino = NewType("Ino", int)
FileHandle = NewType("FileHandle", int)

ROOT_INO = Ino(1)

# Builds a record from its fields in order, skipping the keyword handling of a NamedTuple's
# generated __new__ (about 1 us of a record's cost): for the per-request hot paths, e.g.
# `from_fields(Entry, (ino, attr, timeout, timeout, 0))`. Every field must be given.
from_fields = tuple.__new__


@dataclass(frozen=True, slots=True)
class Context:
    """Who asked: the credentials of the guest process behind a request."""

    uid: int
    gid: int
    pid: int


class Attr(NamedTuple):
    """File attributes as the guest sees them (struct fuse_attr, minus the wire layout)."""

    ino: int  # st_ino shown to the guest
    size: int  # bytes
    blocks: int  # 512-byte units
    atime: int  # seconds
    mtime: int
    ctime: int
    atime_ns: int  # nanoseconds part, 0..999_999_999
    mtime_ns: int
    ctime_ns: int
    mode: int  # type and permission bits
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int = 4096  # preferred I/O size in bytes
    flags: int = 0  # FUSE_ATTR_* (SUBMOUNT, DAX)

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Attr:
        """A host file's attributes (st_ino, rdev in the guest's encoding)."""
        # Positional and through from_fields: 0.5 us instead of 1.5 us with keywords,
        # and this runs for every LOOKUP and GETATTR.
        return from_fields(cls, stat_fields(st))

    @property
    def dirent_type(self) -> int:
        """The DT_* value of this file type (the top bits of the mode, as in readdir)."""
        return stat_module.S_IFMT(self.mode) >> 12


def encode_dev(rdev: int) -> int:
    """A host dev_t as the 32-bit new_encode_dev() value the guest's st_rdev is read from."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFF_FFFF


def decode_dev(rdev: int) -> int:
    """The host dev_t of a guest's 32-bit new_encode_dev() value (MKNOD)."""
    major = (rdev & 0xFFF00) >> 8
    minor = (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)
    return os.makedev(major, minor)


_StatHead: TypeAlias = tuple[int, int, int, int, int, int, int, int, int, int]


def stat_fields(st: os.stat_result) -> tuple[int, ...]:
    """The fields of `Attr` for a host stat, in order: the one place a stat becomes them."""
    # The tuple part of a stat_result (whole seconds in the times, floored as the _ns
    # fields are) unpacks at C speed; attribute reads cost ~40 ns each.
    # (typeshed calls the times float: at runtime these ten are all int)
    mode, ino, _, nlink, uid, gid, size, atime, mtime, ctime = cast("_StatHead", st)
    rdev = st.st_rdev
    return (
        ino, size, st.st_blocks, atime, mtime, ctime, st.st_atime_ns - atime * 1_000_000_000,
        st.st_mtime_ns - mtime * 1_000_000_000, st.st_ctime_ns - ctime * 1_000_000_000,
        mode, nlink, uid, gid, encode_dev(rdev) if rdev else 0, st.st_blksize, 0,
    )  # fmt: skip


class Entry(NamedTuple):
    """A successful lookup: a node id, its attributes and how long the guest may cache them."""

    ino: Ino  # 0 means a negative entry: "no such name", cacheable for entry_timeout
    attr: Attr
    entry_timeout: float  # seconds the guest may cache the name -> ino binding
    attr_timeout: float  # seconds the guest may cache attr
    generation: int = 0


class Opened(NamedTuple):
    """An open file or directory handle and the caching the guest may apply to it."""

    fh: FileHandle
    direct_io: bool = False  # bypass the guest page cache (virtiofsd cache=none)
    keep_cache: bool = False  # keep cached pages from earlier opens (immutable data)
    cache_dir: bool = False  # the guest may cache directory contents
    nonseekable: bool = False


class DirEntry(NamedTuple):
    """One directory entry; `offset` is the cookie that resumes reading after it."""

    ino: int  # st_ino shown in d_ino
    name: bytes
    type: int  # DT_* value
    offset: int


class PlusListing(Protocol):
    """The reply a filesystem fills when it lists READDIRPLUS entries itself.

    The filesystem takes up to `most` entries from its listing, keeps the `fitting` ones,
    looks each up and adds it, so a lookup is counted only for an entry that is sent (a
    name that vanished on the way leaves room to spare, never too little). `add` and
    `add_stat` still refuse (False) a record that does not fit; the filesystem then takes
    that lookup back and stops. An entry with a name the guest must not see (empty, '/' or
    NUL inside) is dropped, and its lookup forgotten, by the listing itself.
    """

    def most(self) -> int:
        """How many more records could fit at most (were all names one byte long)."""
        ...

    def fitting(self, entries: list[DirEntry]) -> list[DirEntry]:
        """The leading `entries` whose records fit, were all of them added."""
        ...

    def add(self, entry: DirEntry, looked_up: Entry | None) -> bool:
        """One record; `looked_up` None for "." and ".." (no lookup counted)."""
        ...

    def add_stat(self, entry: DirEntry, node: Ino, st: os.stat_result, timeout: float) -> bool:
        """One record whose lookup is node `node` with `Attr.from_stat(st)`, packed from
        the stat directly (the passthrough's listing: no Attr or Entry per name)."""
        ...


@dataclass(frozen=True, slots=True)
class StatFs:
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


@dataclass(frozen=True, slots=True)
class SetAttr:
    """The attribute changes of a SETATTR; None means "leave unchanged"."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None  # UTIME_NOW is expressed as `atime_now`
    mtime_ns: int | None = None
    atime_now: bool = False
    mtime_now: bool = False
    ctime_ns: int | None = None
    kill_suidgid: bool = False


@dataclass(frozen=True, slots=True)
class FsOptions:
    """What a filesystem wants from the session; the server maps it onto FUSE INIT flags."""

    readdirplus: bool = True  # answer READDIRPLUS (saves a LOOKUP per entry)
    writeback_cache: bool = False  # let the guest cache writes
    posix_acl: bool = False
    killpriv_v2: bool = False
    zero_message_open: bool = False  # the guest may skip OPEN/OPENDIR (stateless handles)
    cache_symlinks: bool = True
    export_support: bool = False  # lookups of "." and ".." are answered
    submounts: bool = False
    max_readahead: int = 128 * 1024  # bytes; capped by what the guest offers
    max_pages: int = 256  # pages per request (1 MiB)


class Filesystem:
    """Base class of every filesystem served to a guest; each operation defaults to ENOSYS.

    Methods are async so that a filesystem can await slow work (a blob fetch, a thread);
    `forget` and `batch_forget` are synchronous because they can never fail or block.
    """

    async def init(self) -> FsOptions:
        """A new FUSE session starts (INIT): reset per-session state, say what is wanted."""
        return FsOptions()

    async def destroy(self) -> None:
        """The session ends (DESTROY or device reset): drop every node and handle."""

    async def lookup(self, ctx: Context, parent: Ino, name: bytes) -> Entry:
        raise not_supported()

    def may_suspend(self, ino: Ino) -> bool:
        """Whether an operation on `ino` may really await (a blob fetch, a worker thread).

        False promises that every operation on the node completes without yielding to
        trio, which lets a queue thread serve it inline (see vhostfs/queuethread.py). The
        default is the answer that is always safe.
        """
        return True

    def forget(self, ino: Ino, nlookup: int) -> None:
        """Drop `nlookup` references to `ino`; never fails (unknown nodes are ignored)."""

    def batch_forget(self, items: Sequence[tuple[Ino, int]]) -> None:
        for ino, nlookup in items:
            self.forget(ino, nlookup)

    async def getattr(self, ctx: Context, ino: Ino, fh: FileHandle | None) -> tuple[Attr, float]:
        """Return the attributes and how many seconds the guest may cache them."""
        raise not_supported()

    async def setattr(
        self, ctx: Context, ino: Ino, fh: FileHandle | None, changes: SetAttr
    ) -> tuple[Attr, float]:
        raise not_supported()

    async def readlink(self, ctx: Context, ino: Ino) -> bytes:
        raise not_supported()

    async def symlink(self, ctx: Context, parent: Ino, name: bytes, target: bytes) -> Entry:
        raise not_supported()

    async def mknod(
        self, ctx: Context, parent: Ino, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        raise not_supported()

    async def mkdir(self, ctx: Context, parent: Ino, name: bytes, mode: int, umask: int) -> Entry:
        raise not_supported()

    async def unlink(self, ctx: Context, parent: Ino, name: bytes) -> None:
        raise not_supported()

    async def rmdir(self, ctx: Context, parent: Ino, name: bytes) -> None:
        raise not_supported()

    async def rename(
        self, ctx: Context, parent: Ino, name: bytes, new_parent: Ino, new_name: bytes, flags: int
    ) -> None:
        raise not_supported()

    async def link(self, ctx: Context, ino: Ino, new_parent: Ino, new_name: bytes) -> Entry:
        raise not_supported()

    async def open(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        raise not_supported()

    async def create(
        self, ctx: Context, parent: Ino, name: bytes, mode: int, flags: int, umask: int
    ) -> tuple[Entry, Opened]:
        raise not_supported()

    async def tmpfile(
        self, ctx: Context, parent: Ino, mode: int, flags: int, umask: int
    ) -> tuple[Entry, Opened]:
        """An unnamed regular file in `parent` (open(O_TMPFILE)), created and opened.

        The entry counts as a lookup. Unless `flags` has O_EXCL, a later `link` of the node
        must give the file a name (linkat of the guest's fd); with O_EXCL it never can.
        """
        raise not_supported()

    async def read(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, bufs: Sequence[memoryview]
    ) -> int:
        """Fill `bufs` in order with file bytes from `offset`; return the count (short = EOF).

        The buffers are guest memory (zero-copy): write into them, do not keep them.
        """
        raise not_supported()

    async def write(
        self,
        ctx: Context,
        ino: Ino,
        fh: FileHandle,
        offset: int,
        data: Sequence[memoryview],
        flags: int,
    ) -> int:
        """Write `data` in order at `offset`; return the count written.

        `flags` are fuse_write_in.write_flags (abi.WRITE_CACHE, WRITE_LOCKOWNER,
        WRITE_KILL_SUIDGID), not the open flags, which the handle already knows.
        """
        raise not_supported()

    async def flush(self, ctx: Context, ino: Ino, fh: FileHandle, lock_owner: int) -> None:
        raise not_supported()

    async def release(self, ctx: Context, ino: Ino, fh: FileHandle, flags: int) -> None:
        """Close a handle from open/create. Errors are ignored by the kernel."""

    async def fsync(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        raise not_supported()

    async def opendir(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        raise not_supported()

    async def readdir(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int
    ) -> Iterator[DirEntry]:
        """Entries after cookie `offset` (0 = from the start), "." and ".." included.

        The server stops iterating when the guest's buffer is full and resumes later with
        the `offset` of the last entry it sent, so each entry's offset must resume after it.
        """
        raise not_supported()

    async def readdirplus(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, out: PlusListing
    ) -> bool:
        """List readdir's entries into `out` with their lookups done; False: not here.

        A filesystem that can look entries up more cheaply while listing (the passthrough:
        one fstatat per name, no round through the server) fills `out` from `offset` on
        until an entry no longer fits, and returns True. Every entry added with a lookup
        counts as one. A name that vanished between listing and lookup is left out. An
        error after entries were added ends the reply there (the guest asks again from the
        last one). Returning False (the default) makes the server call `readdir` and
        `lookup` instead.
        """
        return False

    async def releasedir(self, ctx: Context, ino: Ino, fh: FileHandle) -> None:
        """Close a handle from opendir."""

    async def fsyncdir(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        raise not_supported()

    async def statfs(self, ctx: Context, ino: Ino) -> StatFs:
        raise not_supported()

    async def setxattr(self, ctx: Context, ino: Ino, name: bytes, value: bytes, flags: int) -> None:
        raise not_supported()

    async def getxattr(self, ctx: Context, ino: Ino, name: bytes) -> bytes:
        """The whole value; the server answers size probes and ERANGE from it."""
        raise not_supported()

    async def listxattr(self, ctx: Context, ino: Ino) -> list[bytes]:
        """Every attribute name, without terminators."""
        raise not_supported()

    async def removexattr(self, ctx: Context, ino: Ino, name: bytes) -> None:
        raise not_supported()

    async def access(self, ctx: Context, ino: Ino, mask: int) -> None:
        raise not_supported()

    async def fallocate(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, length: int, mode: int
    ) -> None:
        raise not_supported()

    async def lseek(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, whence: int) -> int:
        raise not_supported()

    async def syncfs(self, ctx: Context, ino: Ino) -> None:
        raise not_supported()


# Open flags that ask to modify the file (open(2)): refused by a read-only filesystem.
_WRITE_INTENT = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT | os.O_APPEND


class ReadOnlyFilesystem(Filesystem):
    """Wraps a filesystem and answers EROFS to every operation that would modify it.

    What only reads is the inner filesystem's own bound method, set on the instance
    (`_FORWARDED`): a frame less on every request of a read-only export.
    """

    _FORWARDED: Final = (
        "init", "destroy", "lookup", "may_suspend", "forget", "batch_forget", "getattr",
        "readlink", "read", "flush", "release", "opendir", "readdir", "readdirplus",
        "releasedir", "statfs", "getxattr", "listxattr", "lseek",
    )  # fmt: skip

    def __init__(self, inner: Filesystem) -> None:
        self.inner = inner
        for name in self._FORWARDED:
            setattr(self, name, getattr(inner, name))

    async def setattr(
        self, ctx: Context, ino: Ino, fh: FileHandle | None, changes: SetAttr
    ) -> tuple[Attr, float]:
        raise read_only()

    async def symlink(self, ctx: Context, parent: Ino, name: bytes, target: bytes) -> Entry:
        raise read_only()

    async def mknod(
        self, ctx: Context, parent: Ino, name: bytes, mode: int, rdev: int, umask: int
    ) -> Entry:
        raise read_only()

    async def mkdir(self, ctx: Context, parent: Ino, name: bytes, mode: int, umask: int) -> Entry:
        raise read_only()

    async def unlink(self, ctx: Context, parent: Ino, name: bytes) -> None:
        raise read_only()

    async def rmdir(self, ctx: Context, parent: Ino, name: bytes) -> None:
        raise read_only()

    async def rename(
        self, ctx: Context, parent: Ino, name: bytes, new_parent: Ino, new_name: bytes, flags: int
    ) -> None:
        raise read_only()

    async def link(self, ctx: Context, ino: Ino, new_parent: Ino, new_name: bytes) -> Entry:
        raise read_only()

    async def open(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        if flags & _WRITE_INTENT:
            raise read_only()
        return await self.inner.open(ctx, ino, flags)

    async def create(
        self, ctx: Context, parent: Ino, name: bytes, mode: int, flags: int, umask: int
    ) -> tuple[Entry, Opened]:
        raise read_only()

    async def tmpfile(
        self, ctx: Context, parent: Ino, mode: int, flags: int, umask: int
    ) -> tuple[Entry, Opened]:
        raise read_only()

    async def write(
        self,
        ctx: Context,
        ino: Ino,
        fh: FileHandle,
        offset: int,
        data: Sequence[memoryview],
        flags: int,
    ) -> int:
        raise read_only()

    async def fsync(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        return None  # nothing can be dirty

    async def fsyncdir(self, ctx: Context, ino: Ino, fh: FileHandle, datasync: bool) -> None:
        return None

    async def setxattr(self, ctx: Context, ino: Ino, name: bytes, value: bytes, flags: int) -> None:
        raise read_only()

    async def removexattr(self, ctx: Context, ino: Ino, name: bytes) -> None:
        raise read_only()

    async def access(self, ctx: Context, ino: Ino, mask: int) -> None:
        if mask & os.W_OK:
            raise read_only()
        await self.inner.access(ctx, ino, mask)

    async def fallocate(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, length: int, mode: int
    ) -> None:
        raise read_only()

    async def syncfs(self, ctx: Context, ino: Ino) -> None:
        return None
