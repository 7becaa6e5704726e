"""A tiny FUSE "guest" for tests: builds request chains and decodes replies.

Requests are laid out the way the Linux virtio-fs driver does it (in-header and arguments
in separate readable buffers, out-header and payload in separate writable buffers), over
plain bytearrays instead of guest memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from vhostfs.fuse import abi
from vhostfs.fuse.server import FuseServer
from vhostfs.virtio.buffers import ChainReader, ChainWriter

# What the Linux 6.1 guest offered in its INIT (reference section 13.3).
GUEST_FLAGS = 0x7BFFFFFB
GUEST_FLAGS2 = 0x0000000B


@dataclass
class Reply:
    used: int  # the used length handle() returned
    out: bytes  # the writable bytes, whole

    @property
    def header(self) -> abi.OutHeader:
        return abi.OutHeader.unpack_from(self.out)

    @property
    def error(self) -> int:
        return self.header.error

    @property
    def payload(self) -> bytes:
        return self.out[abi.OutHeader.SIZE : self.used]


def in_header(opcode: int, nodeid: int, args_len: int, unique: int = 2,
              uid: int = 0, gid: int = 0, pid: int = 0, length: int | None = None,
              extlen: int = 0) -> bytes:  # fmt: skip
    total = abi.InHeader.SIZE + args_len if length is None else length
    return abi.InHeader(total, opcode, unique, nodeid, uid, gid, pid, extlen, 0).pack()


def chains(
    readable: list[bytes], writable: list[int]
) -> tuple[ChainReader, ChainWriter, list[bytearray]]:
    out = [bytearray(n) for n in writable]
    reader = ChainReader([memoryview(bytearray(b)) for b in readable])
    writer = ChainWriter([memoryview(b) for b in out])
    return reader, writer, out


async def raw(server: FuseServer, readable: list[bytes], writable: list[int]) -> Reply:
    reader, writer, out = chains(readable, writable)
    used = await server.handle(reader, writer)
    return Reply(used, b"".join(out))


async def call(server: FuseServer, opcode: int, nodeid: int = 1, args: bytes = b"",
               out: int = 4096, unique: int = 2) -> Reply:  # fmt: skip
    readable = [in_header(opcode, nodeid, len(args), unique=unique)]
    if args:
        readable.append(args)
    writable = [abi.OutHeader.SIZE] + ([out] if out else [])
    return await raw(server, readable, writable)


def init_args(minor: int = 38, flags: int = GUEST_FLAGS, flags2: int = GUEST_FLAGS2,
              max_readahead: int = 131072) -> bytes:  # fmt: skip
    return abi.InitIn(7, minor, max_readahead, flags, flags2).pack()


async def init(server: FuseServer, **kw: int) -> abi.InitOut:
    reply = await call(server, abi.Opcode.INIT, 0, init_args(**kw), out=64)
    assert reply.error == 0
    return abi.InitOut.unpack(reply.payload)


def cstr(*names: bytes) -> bytes:
    return b"".join(n + b"\0" for n in names)
