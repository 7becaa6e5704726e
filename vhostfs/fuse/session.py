"""FUSE INIT negotiation: from the guest's offer and the filesystem's wishes to a session.

Rules (fuse.h "Version negotiation", and reference section 13.3):

* Major 7 only. A guest with a higher major gets a reply naming ours and nothing else, and
  must retry INIT; a lower major, or a minor below MIN_MINOR, is refused with EPROTO.
* The session uses min(guest minor, OUR_MINOR). We implement 7.38: the in-header's
  `total_extlen` is defined, but we never agree to SECURITY_CTX or CREATE_SUPP_GROUP, so a
  well-behaved guest never sends extensions and the server rejects requests that carry them.
* Every flag we set was offered by the guest; which ones we want follows from FsOptions.
  flags2 bits are only used when the guest sent INIT_EXT; we currently want none of them, so
  INIT_EXT is never set in the reply. SECURITY_CTX is never set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import FsOptions

OUR_MINOR: Final = 38  # protocol 7.38: what the Linux 6.1 guests send
MIN_MINOR: Final = 31  # 7.31 (Linux 5.4) is the oldest with virtio-fs
PAGE_SIZE: Final = 4096
MAX_PAGES_LIMIT: Final = 0xFFFF  # init_out.max_pages is a u16

F = abi.InitFlags

# Wanted by every filesystem we serve (each still needs the guest's offer):
# ASYNC_READ: several READs in flight per file; PARALLEL_DIROPS: concurrent lookups and
# readdirs in one directory; BIG_WRITES: writes over 4 KiB; MAX_PAGES: requests of max_pages
# pages instead of 32; ASYNC_DIO: async direct I/O; ATOMIC_O_TRUNC: O_TRUNC reaches OPEN
# instead of a separate SETATTR; AUTO_INVAL_DATA: drop cached pages when mtime/size change
# (host files may change under the guest).
BASE_FLAGS: Final = (
    F.ASYNC_READ | F.PARALLEL_DIROPS | F.BIG_WRITES | F.MAX_PAGES | F.ASYNC_DIO
    | F.ATOMIC_O_TRUNC | F.AUTO_INVAL_DATA
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Session:
    """What INIT agreed; the server consults it while decoding requests."""

    minor: int
    flags: abi.InitFlags  # flags | flags2 << 32 as agreed
    max_readahead: int
    max_write: int
    max_pages: int
    # Read per request (every LOOKUP asks export_support): computed once, because a test on
    # the IntFlag runs enum's Python-level __and__.
    setxattr_ext: bool = field(init=False)
    export_support: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "setxattr_ext", bool(self.flags & F.SETXATTR_EXT))
        object.__setattr__(self, "export_support", bool(self.flags & F.EXPORT_SUPPORT))


def wanted_flags(opts: FsOptions) -> abi.InitFlags:
    """The INIT flags a filesystem with these options would like."""
    flags = BASE_FLAGS
    optional = (
        (opts.readdirplus, F.DO_READDIRPLUS | F.READDIRPLUS_AUTO),
        (opts.writeback_cache, F.WRITEBACK_CACHE),
        # SETXATTR_EXT only matters for ACL_KILL_SGID, which the kernel sends with POSIX_ACL.
        (opts.posix_acl, F.POSIX_ACL | F.SETXATTR_EXT),
        (opts.killpriv_v2, F.HANDLE_KILLPRIV_V2),
        (opts.cache_symlinks, F.CACHE_SYMLINKS),
        (opts.export_support, F.EXPORT_SUPPORT),
        (opts.submounts, F.SUBMOUNTS),
    )
    for enabled, bits in optional:
        if enabled:
            flags |= bits
    return flags


def offered_flags(init: abi.InitIn) -> abi.InitFlags:
    """The guest's offer as one 64-bit flag set (flags2 counts only with INIT_EXT)."""
    offered = init.flags
    if offered & F.INIT_EXT:
        offered |= init.flags2 << 32
    return abi.InitFlags(offered)


def negotiate(init: abi.InitIn, opts: FsOptions) -> tuple[Session, abi.InitOut]:
    """Agree on a session with a major-7 guest of minor >= MIN_MINOR; pure."""
    agreed = offered_flags(init) & wanted_flags(opts)
    max_pages = max(1, min(opts.max_pages, MAX_PAGES_LIMIT))
    if not agreed & F.MAX_PAGES:
        max_pages = 32  # the kernel's default (FUSE_DEFAULT_MAX_PAGES_PER_REQ)
    session = Session(
        minor=min(init.minor, OUR_MINOR),
        flags=agreed,
        max_readahead=min(init.max_readahead, opts.max_readahead),
        max_write=max_pages * PAGE_SIZE,
        max_pages=max_pages,
    )
    reply = abi.InitOut(
        major=abi.KERNEL_VERSION,
        minor=session.minor,
        max_readahead=session.max_readahead,
        flags=int(agreed) & 0xFFFF_FFFF,
        max_background=0,  # kernel defaults
        congestion_threshold=0,
        max_write=session.max_write,
        time_gran=1,  # nanosecond timestamps
        max_pages=max_pages if agreed & F.MAX_PAGES else 0,
        map_alignment=0,  # no DAX window
        flags2=int(agreed) >> 32 if agreed & F.INIT_EXT else 0,
        max_stack_depth=0,
    )
    return session, reply


def major_mismatch_reply() -> abi.InitOut:
    """For a guest with a newer major: name ours and wait for a new INIT."""
    return abi.InitOut(abi.KERNEL_VERSION, OUR_MINOR, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def describe(session: Session) -> str:
    """A one-line summary for the log."""
    names = "|".join(f.name or "?" for f in F if f in session.flags)
    return (
        f"FUSE 7.{session.minor} flags={int(session.flags):#x} ({names}) "
        f"max_readahead={session.max_readahead} max_write={session.max_write} "
        f"max_pages={session.max_pages}"
    )
