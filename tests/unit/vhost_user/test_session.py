"""Session semantics with a recording device: replies, acks, ring lifecycle, fd ownership."""

from __future__ import annotations

import os
import socket

import pytest

from vhostfs.errors import VhostUserProtocolError
from vhostfs.vhost_user.codec import Message
from vhostfs.vhost_user.device import Vring
from vhostfs.vhost_user.messages import (
    U64,
    FrontendReq,
    Header,
    MemRegion,
    MemTableHeader,
    ProtocolFeatures,
    SingleMemRegion,
    VirtioFeatures,
    VringAddr,
    VringState,
)
from vhostfs.vhost_user.session import Session
from vhostfs.virtio.memory import GuestMemory

NEED_REPLY = 0x9


class RecordingDevice:
    virtio_features = int(
        VirtioFeatures.VERSION_1 | VirtioFeatures.PROTOCOL_FEATURES | VirtioFeatures.RING_EVENT_IDX
    )
    protocol_features = int(
        ProtocolFeatures.MQ | ProtocolFeatures.REPLY_ACK | ProtocolFeatures.CONFIGURE_MEM_SLOTS
    )
    max_queues = 3

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.running: set[int] = set()

    def start_queue(self, vring: Vring, memory: GuestMemory, features: int) -> None:
        self.events.append(("start", vring.index))
        self.running.add(vring.index)

    def interrupt(self, index: int) -> None:
        self.events.append(("interrupt", index))

    async def stop_queue(self, index: int) -> int | None:
        self.events.append(("stop", index))
        self.running.discard(index)
        return 42

    async def stop_all(self) -> None:
        for index in sorted(self.running):
            await self.stop_queue(index)


def reply_value(reply: bytes | None) -> int:
    assert reply is not None
    header = Header.unpack_from(reply)
    assert header.flags == 0x5
    return int.from_bytes(reply[12:], "little")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def negotiate(session: Session) -> None:
    await session.handle(Message(FrontendReq.GET_FEATURES, 1, b""))
    await session.handle(
        Message(FrontendReq.SET_PROTOCOL_FEATURES, 1, U64(RecordingDevice.protocol_features).pack())
    )
    await session.handle(
        Message(FrontendReq.SET_FEATURES, 1, U64(RecordingDevice.virtio_features).pack())
    )


async def test_get_requests_always_reply() -> None:
    session = Session(RecordingDevice())
    features = await session.handle(Message(FrontendReq.GET_FEATURES, 1, b""))
    assert reply_value(features) == RecordingDevice.virtio_features
    queues = await session.handle(Message(FrontendReq.GET_QUEUE_NUM, 1, b""))
    assert reply_value(queues) == 3


async def test_ack_only_with_reply_ack_and_need_reply() -> None:
    session = Session(RecordingDevice())
    assert await session.handle(Message(FrontendReq.SET_OWNER, NEED_REPLY, b"")) is None
    await negotiate(session)
    assert reply_value(await session.handle(Message(FrontendReq.SET_OWNER, NEED_REPLY, b""))) == 0
    assert await session.handle(Message(FrontendReq.SET_OWNER, 1, b"")) is None


async def test_rejected_request_is_nacked_and_its_fds_closed() -> None:
    session = Session(RecordingDevice())
    await negotiate(session)
    before = open_fds()
    r, w = os.pipe()
    os.close(w)
    bad = Message(FrontendReq.SET_VRING_KICK, NEED_REPLY, U64(7).pack(), [r])  # queue 7 > 3
    assert reply_value(await session.handle(bad)) == 1
    assert open_fds() == before


async def test_unknown_request_is_nacked_not_fatal() -> None:
    session = Session(RecordingDevice())
    await negotiate(session)
    assert reply_value(await session.handle(Message(99, NEED_REPLY, b"xyz"))) == 1


async def test_bad_get_request_drops_the_frontend() -> None:
    session = Session(RecordingDevice())
    with pytest.raises(VhostUserProtocolError):
        await session.handle(Message(FrontendReq.GET_VRING_BASE, 1, VringState(9, 0).pack()))


async def test_ring_starts_on_kick_and_enable_and_stops_on_get_base() -> None:
    device = RecordingDevice()
    session = Session(device)
    await negotiate(session)
    fd = os.eventfd(0)
    await session.handle(Message(FrontendReq.SET_VRING_NUM, 1, VringState(1, 256).pack()))
    addr = VringAddr(1, 0, 0x1000, 0x3000, 0x2000, 0)
    await session.handle(Message(FrontendReq.SET_VRING_ADDR, 1, addr.pack()))
    await session.handle(Message(FrontendReq.SET_VRING_KICK, 1, U64(1).pack(), [fd]))
    assert device.events == []  # PROTOCOL_FEATURES: rings start disabled
    await session.handle(Message(FrontendReq.SET_VRING_ENABLE, 1, VringState(1, 1).pack()))
    assert device.events == [("start", 1)]
    call = os.eventfd(0)
    await session.handle(Message(FrontendReq.SET_VRING_CALL, 1, U64(1).pack(), [call]))
    assert device.events == [("start", 1), ("interrupt", 1)]  # the new fd gets a signal
    reply = await session.handle(Message(FrontendReq.GET_VRING_BASE, 1, VringState(1, 0).pack()))
    assert reply is not None and VringState.unpack(reply[12:]) == VringState(1, 42)
    assert device.events[-1] == ("stop", 1)
    assert session.vrings[1].kick is None  # the stop released the kick fd


async def test_running_ring_cannot_be_reconfigured() -> None:
    device = RecordingDevice()
    session = Session(device)
    await negotiate(session)
    await session.handle(Message(FrontendReq.SET_VRING_KICK, 1, U64(1).pack(), [os.eventfd(0)]))
    await session.handle(Message(FrontendReq.SET_VRING_ENABLE, 1, VringState(1, 1).pack()))
    nack = await session.handle(
        Message(FrontendReq.SET_VRING_NUM, NEED_REPLY, VringState(1, 64).pack())
    )
    assert reply_value(nack) == 1
    await session.close()
    assert device.events[-1] == ("stop", 1)


async def test_memory_regions_are_mapped_and_fds_closed() -> None:
    session = Session(RecordingDevice())
    await negotiate(session)
    memfd = os.memfd_create("guest")
    os.ftruncate(memfd, 1 << 20)
    os.pwrite(memfd, b"hello", 0x80000 + 16)
    before = open_fds()
    dup = os.dup(memfd)
    payload = SingleMemRegion(0x80000, 0x80000, 0x7F00_0008_0000, 0x80000).pack()
    reply = await session.handle(Message(FrontendReq.ADD_MEM_REG, NEED_REPLY, payload, [dup]))
    assert reply_value(reply) == 0
    # Python's mmap keeps a private dup of the fd for the mapping's life; ours is closed.
    assert open_fds() == before + 1
    assert bytes(session.memory.view(0x80000 + 16, 5)) == b"hello"
    assert bytes(session.memory.uaddr_view(0x7F00_0008_0000 + 16, 5)) == b"hello"
    table = MemTableHeader(1).pack() + MemRegion(0, 0x1000, 0x5000, 0).pack()
    reply = await session.handle(
        Message(FrontendReq.SET_MEM_TABLE, NEED_REPLY, table, [os.dup(memfd)])
    )
    assert reply_value(reply) == 0
    assert [r.size for r in session.memory.regions] == [0x1000]
    os.close(memfd)
    await session.close()
    assert open_fds() == before - 1  # every mapping and its fd are gone


async def test_backend_channel_is_kept_until_close() -> None:
    session = Session(RecordingDevice())
    await negotiate(session)
    ours, theirs = socket.socketpair()
    fd = theirs.detach()
    reply = await session.handle(Message(FrontendReq.SET_BACKEND_REQ_FD, NEED_REPLY, b"", [fd]))
    assert reply_value(reply) == 0
    assert session.backend_channel == fd
    os.fstat(fd)  # still open: the session owns it
    await session.close()
    assert session.backend_channel is None
    assert ours.recv(1) == b""  # the other end sees the channel closed
    ours.close()
