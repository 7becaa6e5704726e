"""A malformed or hostile vhost-user frontend: the daemon logs, refuses, and keeps serving.

The daemon runs in-process on a real unix socket; the "frontend" here is a raw client that
sends hand-made frames, so each class of bad input in the issue gets its own test. After
every bad input the daemon must still answer a well-formed request, on the same connection
where the protocol allows it, or on a new one where it had to drop the frontend.
"""

from __future__ import annotations

import array
import os
import socket
from pathlib import Path

import pytest
import trio

from tests.support.memoryfs import MemoryFilesystem
from vhostfs import daemon
from vhostfs.fuse.server import FuseServer
from vhostfs.vhost_user.messages import (
    U64,
    FrontendReq,
    Header,
    ProtocolFeatures,
    SingleMemRegion,
    VringAddr,
    VringState,
)

NEED_REPLY = 0x9


class RawFrontend:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    async def send(
        self, request: int, payload: bytes = b"", flags: int = 1, fds: list[int] | None = None
    ) -> None:
        data = Header(request, flags, len(payload)).pack() + payload
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        await self.sock.sendmsg([data], ancillary)

    async def send_raw(self, data: bytes) -> None:
        await self.sock.send(data)

    async def reply(self) -> tuple[int, bytes]:
        with trio.fail_after(5):
            header = await self._exactly(Header.SIZE)
            decoded = Header.unpack(header)
            return decoded.request, await self._exactly(decoded.size)

    async def reply_u64(self) -> int:
        _, payload = await self.reply()
        return U64.unpack(payload).value

    async def closed_by_peer(self) -> bool:
        with trio.fail_after(5):
            return await self.sock.recv(1) == b""

    async def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = await self.sock.recv(size - len(data))
            if not chunk:
                raise EOFError("daemon closed the connection")
            data += chunk
        return data

    async def negotiate_acks(self) -> None:
        await self.send(FrontendReq.GET_FEATURES)
        await self.reply()
        acks = ProtocolFeatures.REPLY_ACK | ProtocolFeatures.CONFIGURE_MEM_SLOTS
        await self.send(FrontendReq.SET_PROTOCOL_FEATURES, U64(acks).pack())

    async def still_serving(self) -> bool:
        await self.send(FrontendReq.GET_QUEUE_NUM)
        return await self.reply_u64() > 1


@pytest.fixture
async def socket_path(tmp_path: Path, nursery: trio.Nursery) -> str:
    path = str(tmp_path / "vhost.sock")
    listener = await daemon.listen_unix(path)
    nursery.start_soon(lambda: daemon.serve(listener, FuseServer(MemoryFilesystem()), once=False))
    return path


async def connect(path: str) -> RawFrontend:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(path)
    return RawFrontend(sock)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_truncated_message_then_close_leaves_daemon_serving(socket_path: str) -> None:
    frontend = await connect(socket_path)
    await frontend.send_raw(Header(FrontendReq.SET_FEATURES, 1, 8).pack() + b"\0\0\0")
    frontend.sock.close()
    assert await (await connect(socket_path)).still_serving()


async def test_oversized_payload_drops_only_that_frontend(socket_path: str) -> None:
    frontend = await connect(socket_path)
    await frontend.send_raw(Header(FrontendReq.SET_MEM_TABLE, 1, 1 << 30).pack())
    assert await frontend.closed_by_peer()
    assert await (await connect(socket_path)).still_serving()


async def test_wrong_fd_count_is_nacked_and_fds_closed(socket_path: str) -> None:
    frontend = await connect(socket_path)
    await frontend.negotiate_acks()
    assert await frontend.still_serving()
    before = open_fds()
    a, b = os.eventfd(0), os.eventfd(0)
    await frontend.send(FrontendReq.SET_VRING_CALL, U64(1).pack(), NEED_REPLY, [a, b])
    assert await frontend.reply_u64() == 1
    assert open_fds() == before + 2  # only our own two: the daemon's copies are closed
    os.close(a)
    os.close(b)
    assert await frontend.still_serving()


async def test_wrong_payload_size_and_unknown_request_are_nacked(socket_path: str) -> None:
    frontend = await connect(socket_path)
    await frontend.negotiate_acks()
    await frontend.send(FrontendReq.SET_VRING_NUM, b"\1\0", NEED_REPLY)
    assert await frontend.reply_u64() == 1
    await frontend.send(77, b"whatever", NEED_REPLY)
    assert await frontend.reply_u64() == 1
    assert await frontend.still_serving()


async def test_memory_region_larger_than_its_fd_is_refused(socket_path: str) -> None:
    frontend = await connect(socket_path)
    await frontend.negotiate_acks()
    memfd = os.memfd_create("tiny")
    os.ftruncate(memfd, 4096)
    region = SingleMemRegion(0, 1 << 20, 0x7000_0000, 0)  # 1 MiB claimed, 4 KiB real
    await frontend.send(FrontendReq.ADD_MEM_REG, region.pack(), NEED_REPLY, [memfd])
    assert await frontend.reply_u64() == 1
    os.close(memfd)
    assert await frontend.still_serving()


async def test_ring_outside_guest_memory_does_not_start(socket_path: str) -> None:
    frontend = await connect(socket_path)
    await frontend.negotiate_acks()
    memfd = os.memfd_create("guest")
    os.ftruncate(memfd, 1 << 20)
    region = SingleMemRegion(0, 1 << 20, 0x7000_0000, 0)
    await frontend.send(FrontendReq.ADD_MEM_REG, region.pack(), NEED_REPLY, [memfd])
    assert await frontend.reply_u64() == 0
    os.close(memfd)
    await frontend.send(FrontendReq.SET_VRING_NUM, VringState(1, 256).pack())
    far = 0x7000_0000 + (1 << 20) - 64  # the descriptor table would run off the region
    addr = VringAddr(1, 0, far, 0x7000_2000, 0x7000_1000, 0)
    await frontend.send(FrontendReq.SET_VRING_ADDR, addr.pack())
    kick = os.eventfd(0)
    await frontend.send(FrontendReq.SET_VRING_KICK, U64(1).pack(), 1, [kick])
    os.close(kick)
    await frontend.send(FrontendReq.SET_VRING_ENABLE, VringState(1, 1).pack(), NEED_REPLY)
    assert await frontend.reply_u64() == 1
    assert await frontend.still_serving()
