"""INIT negotiation, DESTROY and the session lifecycle through FuseServer.handle."""

from __future__ import annotations

import errno

from tests.support import fuseclient
from tests.support.fuseclient import GUEST_FLAGS, GUEST_FLAGS2, call, init_args
from tests.support.memoryfs import MemoryFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import FsOptions
from vhostfs.fuse.server import FuseServer
from vhostfs.fuse.session import BASE_FLAGS

Op = abi.Opcode
F = abi.InitFlags


async def test_init_with_the_6_1_guest_offer() -> None:
    srv = FuseServer(MemoryFilesystem())
    reply = await call(srv, Op.INIT, 0, init_args(), out=64)
    assert reply.used == 80 and reply.header == abi.OutHeader(80, 0, 2)
    out = abi.InitOut.unpack(reply.payload)
    assert (out.major, out.minor) == (7, 38)
    assert out.flags & ~GUEST_FLAGS == 0  # only what was offered
    assert out.flags & F.MAX_PAGES and out.max_pages == 256
    assert out.max_write == 1 << 20 and out.time_gran == 1
    assert out.flags & (F.DO_READDIRPLUS | F.READDIRPLUS_AUTO | F.CACHE_SYMLINKS)
    assert not out.flags & (F.INIT_EXT | F.WRITEBACK_CACHE | F.POSIX_ACL | F.EXPORT_SUPPORT)
    assert out.flags2 == 0  # never SECURITY_CTX
    assert out.max_readahead == 131072
    assert srv.session is not None and srv.session.minor == 38


async def test_init_sets_nothing_the_guest_did_not_offer() -> None:
    srv = FuseServer(MemoryFilesystem(FsOptions(posix_acl=True, export_support=True)))
    out = await fuseclient.init(srv, flags=int(F.ASYNC_READ), flags2=0xFFFF_FFFF)
    assert out.flags == F.ASYNC_READ and out.max_pages == 0 and out.flags2 == 0
    assert out.max_write == 32 * 4096


async def test_init_options_select_flags() -> None:
    fs = MemoryFilesystem(FsOptions(readdirplus=False, posix_acl=True, export_support=True,
                                    cache_symlinks=False, max_readahead=65536))  # fmt: skip
    out = await fuseclient.init(FuseServer(fs))
    wanted = BASE_FLAGS | F.POSIX_ACL | F.SETXATTR_EXT | F.EXPORT_SUPPORT
    assert out.flags == wanted & GUEST_FLAGS
    assert out.max_readahead == 65536


async def test_init_older_minor_and_16_byte_form() -> None:
    srv = FuseServer(MemoryFilesystem())
    args = init_args(minor=31, flags=GUEST_FLAGS, flags2=GUEST_FLAGS2)[:16]
    reply = await call(srv, Op.INIT, 0, args, out=64)
    out = abi.InitOut.unpack(reply.payload)
    assert out.minor == 31 and out.flags2 == 0


async def test_init_newer_major_asks_for_ours() -> None:
    srv = FuseServer(MemoryFilesystem())
    args = abi.InitIn(8, 1, 0, 0, 0).pack()
    reply = await call(srv, Op.INIT, 0, args, out=64)
    out = abi.InitOut.unpack(reply.payload)
    assert (out.major, out.minor, out.flags) == (7, 38, 0)
    assert srv.session is None


async def test_init_too_old_is_eproto() -> None:
    srv = FuseServer(MemoryFilesystem())
    reply = await call(srv, Op.INIT, 0, init_args(minor=26), out=64)
    assert reply.used == 16 and reply.error == -errno.EPROTO
    assert srv.session is None


async def test_init_truncated_is_einval() -> None:
    srv = FuseServer(MemoryFilesystem())
    reply = await call(srv, Op.INIT, 0, b"\x07\0\0\0", out=64)
    assert reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


async def test_requests_before_init_are_eio() -> None:
    fs = MemoryFilesystem()
    srv = FuseServer(fs)
    reply = await call(srv, Op.GETATTR, 1, bytes(16))
    assert reply.header == abi.OutHeader(16, -errno.EIO, 2)
    forget = await call(srv, Op.FORGET, 1, abi.ForgetIn(1).pack(), out=0)
    assert forget.used == 0


async def test_second_init_resets_the_session() -> None:
    fs = MemoryFilesystem()
    srv = FuseServer(fs)
    await fuseclient.init(srv)
    ino = fs.add_file(b"f")
    await call(srv, Op.LOOKUP, 1, b"f\0")
    assert fs.lookups == {ino: 1}
    await fuseclient.init(srv)
    assert (fs.inits, fs.destroys) == (2, 1)
    assert fs.lookups == {}


async def test_destroy_ends_the_session() -> None:
    fs = MemoryFilesystem()
    srv = FuseServer(fs)
    await fuseclient.init(srv)
    reply = await call(srv, Op.DESTROY, 0, out=0)
    assert reply.header == abi.OutHeader(16, 0, 2) and reply.used == 16
    assert fs.destroys == 1 and srv.session is None
    after = await call(srv, Op.GETATTR, 1, bytes(16))
    assert after.error == -errno.EIO
    await fuseclient.init(srv)
    assert fs.destroys == 1  # nothing left to destroy


async def test_reset_destroys_once() -> None:
    fs = MemoryFilesystem()
    srv = FuseServer(fs)
    await fuseclient.init(srv)
    await srv.reset()
    await srv.reset()
    assert fs.destroys == 1
