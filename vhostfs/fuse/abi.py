"""The FUSE kernel ABI: opcodes, flag sets and every wire struct the server uses.

Source of truth: Linux ``include/uapi/linux/fuse.h`` (protocol 7.38, the version the 6.1
guests send). Names follow the kernel header without the ``fuse_``/``FUSE_`` prefix so a
layout can be grepped for on both sides. Nothing here does I/O or policy; the dispatcher in
`server.py` decodes with these records (or, on the hot path, with their precompiled
``STRUCT``) and encodes replies with them.

All integers are little-endian (virtio-fs is little-endian regardless of the guest) and every
struct is padded to 8 bytes, as in the header. Variable-length records (dirents) are aligned
with `rec_align`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from rafs.records import Composite, Record

KERNEL_VERSION: Final = 7  # major protocol version (fuse.h FUSE_KERNEL_VERSION)
ROOT_ID: Final = 1  # node id of the root (FUSE_ROOT_ID)

# Compatibility sizes of structs that grew over time (fuse.h FUSE_COMPAT_*).
COMPAT_INIT_IN_SIZE: Final = 8  # before 7.6: major, minor only
COMPAT_22_INIT_IN_SIZE: Final = 16  # 7.6 .. 7.35: no flags2
COMPAT_SETXATTR_IN_SIZE: Final = 8  # without SETXATTR_EXT
COMPAT_WRITE_IN_SIZE: Final = 24  # before 7.9
MAX_ALIGN_SHIFT: Final = 21  # map_alignment may not exceed this (2 MiB)


class Opcode(enum.IntEnum):
    """Request codes (fuse.h enum fuse_opcode)."""

    LOOKUP = 1
    FORGET = 2  # no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42  # no reply
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


class InitFlags(enum.IntFlag):
    """INIT request/reply flags; bits 32 and up travel in the separate ``flags2`` word."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30  # flags2 is valid
    INIT_RESERVED = 1 << 31
    # flags2 (bit n of flags2 is bit 32 + n here)
    SECURITY_CTX = 1 << 32
    HAS_INODE_DAX = 1 << 33
    CREATE_SUPP_GROUP = 1 << 34
    HAS_EXPIRE_ONLY = 1 << 35
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    PASSTHROUGH = 1 << 37
    NO_EXPORT_SUPPORT = 1 << 38
    HAS_RESEND = 1 << 39


class OpenOutFlags(enum.IntFlag):
    """fuse_open_out.open_flags (FOPEN_*)."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5
    PARALLEL_DIRECT_WRITES = 1 << 6


class SetattrValid(enum.IntFlag):
    """fuse_setattr_in.valid (FATTR_*)."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6
    ATIME_NOW = 1 << 7
    MTIME_NOW = 1 << 8
    LOCKOWNER = 1 << 9
    CTIME = 1 << 10
    KILL_SUIDGID = 1 << 11


GETATTR_FH: Final = 1 << 0  # fuse_getattr_in.getattr_flags: fh is valid
FSYNC_FDATASYNC: Final = 1 << 0  # fuse_fsync_in.fsync_flags
READ_LOCKOWNER: Final = 1 << 1  # fuse_read_in.read_flags
WRITE_CACHE: Final = 1 << 0  # fuse_write_in.write_flags
WRITE_LOCKOWNER: Final = 1 << 1
WRITE_KILL_SUIDGID: Final = 1 << 2
RELEASE_FLUSH: Final = 1 << 0  # fuse_release_in.release_flags
RELEASE_FLOCK_UNLOCK: Final = 1 << 1
OPEN_KILL_SUIDGID: Final = 1 << 0  # fuse_open_in.open_flags
SETXATTR_ACL_KILL_SGID: Final = 1 << 0  # fuse_setxattr_in.setxattr_flags
ATTR_SUBMOUNT: Final = 1 << 0  # fuse_attr.flags
ATTR_DAX: Final = 1 << 1


def rec_align(size: int) -> int:
    """Round up to the 8-byte alignment of variable-length records (FUSE_REC_ALIGN)."""
    return (size + 7) & ~7


# The 88-byte fuse_attr, embedded flat in AttrOut, EntryOut and DirentplusHeader: ino, size,
# blocks, atime, mtime, ctime (u64); atimensec, mtimensec, ctimensec, mode, nlink, uid, gid,
# rdev, blksize, flags (u32). Declared once here and reused by the records that embed it.
ATTR_FMT: Final = "QQQQQQIIIIIIIIII"
# The 24-byte fuse_dirent header before the name: ino, off (cookie), namelen, type.
DIRENT_FMT: Final = "QQII"
# The 40-byte head of fuse_entry_out before the attr.
ENTRY_FMT: Final = "QQQQII"


# --- headers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InHeader(Record, fmt="<IIQQIIIHH"):
    len: int  # bytes of the whole request, header included
    opcode: int
    unique: int  # request id, echoed in the reply
    nodeid: int
    uid: int
    gid: int
    pid: int
    total_extlen: int  # 7.38+: trailing extensions, in 8-byte units
    padding: int


@dataclass(frozen=True, slots=True)
class OutHeader(Record, fmt="<IiQ"):
    len: int  # bytes of the whole reply, header included
    error: int  # 0 or a negative errno
    unique: int


# --- INIT / DESTROY --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitIn(Record, fmt="<IIIII44x"):
    """fuse_init_in as sent from 7.36 on (64 bytes); see `decode_init_in` for older forms."""

    major: int
    minor: int
    max_readahead: int  # bytes
    flags: int  # InitFlags bits 0..31
    flags2: int  # InitFlags bits 32..63, valid with INIT_EXT


@dataclass(frozen=True, slots=True)
class InitInCompat(Record, fmt="<IIII"):
    """fuse_init_in of protocol 7.6 .. 7.35 (16 bytes)."""

    major: int
    minor: int
    max_readahead: int
    flags: int


@dataclass(frozen=True, slots=True)
class InitInMajorMinor(Record, fmt="<II"):
    """The first 8 bytes every INIT request carries."""

    major: int
    minor: int


def decode_init_in(data: bytes) -> InitIn:
    """Decode any of the three fuse_init_in sizes (8, 16 or 64 bytes) into the 7.36 form."""
    if len(data) >= InitIn.SIZE:
        return InitIn.unpack_from(data)
    if len(data) >= InitInCompat.SIZE:
        c = InitInCompat.unpack_from(data)
        return InitIn(c.major, c.minor, c.max_readahead, c.flags, 0)
    mm = InitInMajorMinor.unpack_from(data)
    return InitIn(mm.major, mm.minor, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class InitOut(Record, fmt="<IIIIHHIIHHII24x"):
    major: int
    minor: int
    max_readahead: int  # bytes
    flags: int  # InitFlags bits 0..31
    max_background: int  # 0 = kernel default
    congestion_threshold: int  # 0 = kernel default
    max_write: int  # bytes
    time_gran: int  # ns granularity of timestamps
    max_pages: int  # pages per request, with MAX_PAGES
    map_alignment: int  # log2 bytes, with MAP_ALIGNMENT
    flags2: int  # InitFlags bits 32..63, with INIT_EXT
    max_stack_depth: int  # 7.40 passthrough; 0 here


# --- attributes and entries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attr(Record, fmt="<" + ATTR_FMT):
    ino: int
    size: int  # bytes
    blocks: int  # 512-byte units
    atime: int  # seconds
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int  # bytes
    flags: int  # ATTR_SUBMOUNT, ATTR_DAX


@dataclass(frozen=True, slots=True)
class AttrOutHead(Record, fmt="<QII"):
    """The 16 bytes of fuse_attr_out before its fuse_attr."""

    attr_valid: int  # seconds
    attr_valid_nsec: int
    dummy: int


@dataclass(frozen=True, slots=True)
class EntryOutHead(Record, fmt="<" + ENTRY_FMT):
    """The 40 bytes of fuse_entry_out before its fuse_attr."""

    nodeid: int
    generation: int
    entry_valid: int  # seconds
    attr_valid: int  # seconds
    entry_valid_nsec: int
    attr_valid_nsec: int


@dataclass(frozen=True, slots=True)
class DirentHeader(Record, fmt="<" + DIRENT_FMT):
    ino: int  # d_ino
    off: int  # cookie that resumes after this entry
    namelen: int  # bytes, no terminator
    type: int  # DT_*


@dataclass(frozen=True, slots=True)
class AttrOut(Composite, parts=(AttrOutHead, Attr)):
    """fuse_attr_out (104 bytes)."""

    head: AttrOutHead
    attr: Attr


@dataclass(frozen=True, slots=True)
class EntryOut(Composite, parts=(EntryOutHead, Attr)):
    """fuse_entry_out (128 bytes)."""

    head: EntryOutHead
    attr: Attr

    @property
    def nodeid(self) -> int:
        return self.head.nodeid


@dataclass(frozen=True, slots=True)
class DirentplusHeader(Composite, parts=(EntryOutHead, Attr, DirentHeader)):
    """fuse_direntplus before the name (152 bytes): fuse_entry_out, then fuse_dirent."""

    head: EntryOutHead
    attr: Attr
    dirent: DirentHeader


# --- requests with fixed arguments -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForgetIn(Record, fmt="<Q"):
    nlookup: int


@dataclass(frozen=True, slots=True)
class ForgetOne(Record, fmt="<QQ"):
    nodeid: int
    nlookup: int


@dataclass(frozen=True, slots=True)
class BatchForgetIn(Record, fmt="<II"):
    count: int  # ForgetOne records that follow
    dummy: int


@dataclass(frozen=True, slots=True)
class GetattrIn(Record, fmt="<IIQ"):
    getattr_flags: int  # GETATTR_FH
    dummy: int
    fh: int


@dataclass(frozen=True, slots=True)
class SetattrIn(Record, fmt="<IIQQQQQQIIIIIIII"):
    valid: int  # SetattrValid
    padding: int
    fh: int
    size: int
    lock_owner: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    unused4: int
    uid: int
    gid: int
    unused5: int


@dataclass(frozen=True, slots=True)
class MknodIn(Record, fmt="<IIII"):
    mode: int
    rdev: int
    umask: int
    padding: int


@dataclass(frozen=True, slots=True)
class MkdirIn(Record, fmt="<II"):
    mode: int
    umask: int


@dataclass(frozen=True, slots=True)
class RenameIn(Record, fmt="<Q"):
    newdir: int


@dataclass(frozen=True, slots=True)
class Rename2In(Record, fmt="<QII"):
    newdir: int
    flags: int  # RENAME_NOREPLACE / EXCHANGE / WHITEOUT
    padding: int


@dataclass(frozen=True, slots=True)
class LinkIn(Record, fmt="<Q"):
    oldnodeid: int


@dataclass(frozen=True, slots=True)
class OpenIn(Record, fmt="<II"):
    flags: int  # open(2) flags
    open_flags: int  # OPEN_KILL_SUIDGID


@dataclass(frozen=True, slots=True)
class CreateIn(Record, fmt="<IIII"):
    flags: int
    mode: int
    umask: int
    open_flags: int


@dataclass(frozen=True, slots=True)
class OpenOut(Record, fmt="<QIi"):
    fh: int
    open_flags: int  # OpenOutFlags
    backing_id: int  # 7.40 passthrough; 0 here (was padding)


@dataclass(frozen=True, slots=True)
class ReleaseIn(Record, fmt="<QIIQ"):
    fh: int
    flags: int
    release_flags: int
    lock_owner: int


@dataclass(frozen=True, slots=True)
class FlushIn(Record, fmt="<QIIQ"):
    fh: int
    unused: int
    padding: int
    lock_owner: int


@dataclass(frozen=True, slots=True)
class ReadIn(Record, fmt="<QQIIQII"):
    fh: int
    offset: int  # bytes (a cookie for READDIR)
    size: int  # bytes wanted
    read_flags: int
    lock_owner: int
    flags: int
    padding: int


@dataclass(frozen=True, slots=True)
class WriteIn(Record, fmt="<QQIIQII"):
    fh: int
    offset: int
    size: int  # bytes of data following this struct
    write_flags: int
    lock_owner: int
    flags: int
    padding: int


@dataclass(frozen=True, slots=True)
class WriteOut(Record, fmt="<II"):
    size: int
    padding: int


@dataclass(frozen=True, slots=True)
class KStatfs(Record, fmt="<QQQQQIIII24x"):
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int
    padding: int


@dataclass(frozen=True, slots=True)
class FsyncIn(Record, fmt="<QII"):
    fh: int
    fsync_flags: int  # FSYNC_FDATASYNC
    padding: int


@dataclass(frozen=True, slots=True)
class SetxattrIn(Record, fmt="<IIII"):
    """fuse_setxattr_in with SETXATTR_EXT negotiated (16 bytes)."""

    size: int  # value bytes after the name
    flags: int  # XATTR_CREATE / XATTR_REPLACE
    setxattr_flags: int  # SETXATTR_ACL_KILL_SGID
    padding: int


@dataclass(frozen=True, slots=True)
class SetxattrInCompat(Record, fmt="<II"):
    """fuse_setxattr_in without SETXATTR_EXT (8 bytes)."""

    size: int
    flags: int


@dataclass(frozen=True, slots=True)
class GetxattrIn(Record, fmt="<II"):
    size: int  # guest buffer bytes; 0 = probe the size
    padding: int


@dataclass(frozen=True, slots=True)
class GetxattrOut(Record, fmt="<II"):
    size: int
    padding: int


@dataclass(frozen=True, slots=True)
class AccessIn(Record, fmt="<II"):
    mask: int  # R_OK | W_OK | X_OK
    padding: int


@dataclass(frozen=True, slots=True)
class InterruptIn(Record, fmt="<Q"):
    unique: int


@dataclass(frozen=True, slots=True)
class FallocateIn(Record, fmt="<QQQII"):
    fh: int
    offset: int
    length: int
    mode: int
    padding: int


@dataclass(frozen=True, slots=True)
class LseekIn(Record, fmt="<QQII"):
    fh: int
    offset: int
    whence: int  # SEEK_SET .. SEEK_HOLE
    padding: int


@dataclass(frozen=True, slots=True)
class LseekOut(Record, fmt="<Q"):
    offset: int


@dataclass(frozen=True, slots=True)
class SyncfsIn(Record, fmt="<Q"):
    padding: int


@dataclass(frozen=True, slots=True)
class CopyFileRangeIn(Record, fmt="<QQQQQQQ"):
    fh_in: int
    off_in: int
    nodeid_out: int
    fh_out: int
    off_out: int
    len: int
    flags: int


@dataclass(frozen=True, slots=True)
class SetupmappingIn(Record, fmt="<QQQQQ"):
    fh: int
    foffset: int
    len: int
    flags: int
    moffset: int


@dataclass(frozen=True, slots=True)
class ExtHeader(Record, fmt="<II"):
    """A 7.38 request extension header (only sent for SECURITY_CTX / CREATE_SUPP_GROUP)."""

    size: int
    type: int
