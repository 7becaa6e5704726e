"""Malformed requests and failing filesystems: each gets an exact reply (or none)."""

from __future__ import annotations

import errno
import logging

import pytest
import trio

from tests.support import fuseclient
from tests.support.fuseclient import call, in_header, raw
from tests.support.memoryfs import MemoryFilesystem
from vhostfs.errors import FsError
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import Attr, Context, FileHandle, Ino
from vhostfs.fuse.server import FuseServer

Op = abi.Opcode


async def test_short_header(server: FuseServer) -> None:
    header = in_header(Op.GETATTR, 1, 16, unique=8)
    reply = await raw(server, [header[:20]], [16, 104])
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.EIO, 8)


async def test_tiny_header_without_unique(server: FuseServer) -> None:
    reply = await raw(server, [b"\x01\x02"], [16])
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.EIO, 0)


async def test_empty_chain(server: FuseServer) -> None:
    reply = await raw(server, [], [])
    assert reply.used == 0


async def test_len_larger_than_readable(server: FuseServer) -> None:
    header = in_header(Op.GETATTR, 1, 16, length=40 + 64)
    reply = await raw(server, [header, bytes(16)], [16, 104])
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


async def test_len_smaller_than_readable(server: FuseServer) -> None:
    header = in_header(Op.GETATTR, 1, 16, length=40)
    reply = await raw(server, [header, bytes(16)], [16, 104])
    assert reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


async def test_extensions_not_negotiated(server: FuseServer) -> None:
    reply = await raw(server, [in_header(Op.GETATTR, 1, 16, extlen=1), bytes(16)], [16, 104])
    assert reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


@pytest.mark.parametrize(
    ("op", "args"),
    [(Op.GETATTR, bytes(8)), (Op.READ, bytes(39)), (Op.OPEN, b""), (Op.SETATTR, bytes(80)),
     (Op.RENAME2, bytes(8)), (Op.GETXATTR, bytes(4)), (Op.FLUSH, bytes(23))],
)  # fmt: skip
async def test_truncated_arguments(server: FuseServer, op: int, args: bytes) -> None:
    reply = await call(server, op, 1, args)
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


@pytest.mark.parametrize(
    "name", [b"abc", b"", b"\0", b"a/b\0", b"a\0b\0", b".\0", b"..\0"]
)
async def test_bad_names(server: FuseServer, name: bytes) -> None:
    reply = await call(server, Op.LOOKUP, 1, name)
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


async def test_xattr_name_without_nul(server: FuseServer) -> None:
    reply = await call(server, Op.GETXATTR, 1, abi.GetxattrIn(0, 0).pack() + b"user.a")
    assert reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


async def test_reply_buffer_too_small_for_header(server: FuseServer) -> None:
    reply = await raw(server, [in_header(Op.GETATTR, 1, 16), bytes(16)], [8])
    assert reply.used == 0 and reply.out == bytes(8)


async def test_reply_buffer_too_small_for_payload(server: FuseServer) -> None:
    reply = await raw(server, [in_header(Op.GETATTR, 1, 16), bytes(16)], [16, 50])
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


async def test_batch_forget_count_larger_than_payload(
    server: FuseServer, memfs: MemoryFilesystem
) -> None:
    a = memfs.add_file(b"a")
    await call(server, Op.LOOKUP, 1, b"a\0")
    await call(server, Op.LOOKUP, 1, b"a\0")
    args = abi.BatchForgetIn(1_000_000, 0).pack() + abi.ForgetOne(a, 1).pack() + b"junk"
    reply = await call(server, Op.BATCH_FORGET, 0, args, out=0)
    assert reply.used == 0
    assert memfs.lookups == {a: 1}  # the one complete record was applied


async def test_forget_truncated(server: FuseServer, memfs: MemoryFilesystem) -> None:
    reply = await call(server, Op.FORGET, 1, b"\x01", out=0)
    assert reply.used == 0


async def test_forget_header_lies(server: FuseServer) -> None:
    header = in_header(Op.FORGET, 1, 8, length=100)
    reply = await raw(server, [header, abi.ForgetIn(1).pack()], [])
    assert reply.used == 0


class FailingFs(MemoryFilesystem):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    async def getattr(self, ctx: Context, ino: Ino, fh: FileHandle | None) -> tuple[Attr, float]:
        raise self.exc

    def forget(self, ino: Ino, nlookup: int) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [(FsError(errno.ESTALE), errno.ESTALE),
     (FileNotFoundError(errno.ENOENT, "x"), errno.ENOENT),
     (PermissionError(errno.EACCES, "x"), errno.EACCES),
     (OSError("no errno"), errno.EIO),
     (RuntimeError("bug"), errno.EIO),
     (ValueError("bug"), errno.EIO)],
)  # fmt: skip
async def test_exceptions_become_errno(exc: Exception, code: int,
                                       caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    srv = FuseServer(FailingFs(exc))
    await fuseclient.init(srv)
    with caplog.at_level(logging.ERROR):
        reply = await call(srv, Op.GETATTR, 1, bytes(16))
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -code, 2)
    assert (code == errno.EIO and not isinstance(exc, FsError)) == bool(caplog.records)


async def test_errno_out_of_range_is_eio() -> None:
    exc = OSError(9999, "weird")
    srv = FuseServer(FailingFs(exc))
    await fuseclient.init(srv)
    assert (await call(srv, Op.GETATTR, 1, bytes(16))).error == -errno.EIO


async def test_failing_forget_still_has_no_reply() -> None:
    srv = FuseServer(FailingFs(RuntimeError("bug")))
    await fuseclient.init(srv)
    reply = await call(srv, Op.FORGET, 5, abi.ForgetIn(1).pack(), out=0)
    assert reply.used == 0


async def test_cancellation_is_not_swallowed() -> None:
    class SlowFs(MemoryFilesystem):
        async def getattr(self, ctx: Context, ino: Ino,
                          fh: FileHandle | None) -> tuple[Attr, float]:  # fmt: skip
            await trio.sleep_forever()
            raise AssertionError

    srv = FuseServer(SlowFs())
    await fuseclient.init(srv)
    with trio.CancelScope() as scope:
        scope.cancel()
        await call(srv, Op.GETATTR, 1, bytes(16))
    assert scope.cancelled_caught


async def test_bad_input_logging_is_rate_limited(
    server: FuseServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            await call(server, Op.LOOKUP, 1, b"no-nul")
    assert len(caplog.records) == 10
    assert server.bad_input.dropped == 40
