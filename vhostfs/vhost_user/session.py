"""The backend side of one vhost-user connection: request semantics and ring lifecycle.

Spec: QEMU docs/interop/vhost-user.rst; behaviour of QEMU 7.2 in
reference/vhost-user-virtiofs.md sections 2.3, 5-7 and 11.

Theory of operation. Requests are handled strictly in order (the frontend pipelines requests
that need no reply). `handle` takes one decoded Message, applies it and returns the bytes of
the reply, if one is due. The per-request handlers are one table (`_HANDLERS`).

Replies: requests that have a reply body always get one. Every other request gets a u64 ack
(0 = success) only when REPLY_ACK was negotiated and the frontend set NEED_REPLY.

Ring lifecycle (vhost-user.rst, "Ring states"): a ring is *started* by SET_VRING_KICK and
*stopped* by GET_VRING_BASE; with PROTOCOL_FEATURES negotiated it starts disabled until
SET_VRING_ENABLE 1, without them it starts enabled. The device runs a ring while it is
started and enabled; disabling keeps the position so enabling resumes where it stopped.

Failures: a request that is well framed but cannot be carried out raises RejectedRequest; it
is nacked where an ack was asked for and logged otherwise, and the connection goes on. A
request with a reply body that cannot be answered, or anything that desynchronises the
stream, raises VhostUserProtocolError and the daemon drops the frontend.

fds: the session owns every fd a message brings. It keeps ring fds in `Vring`, maps memory
fds and closes them (the mapping outlives the fd), and closes everything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

from vhostfs.errors import RejectedRequest, VhostfsError, VhostUserProtocolError
from vhostfs.vhost_user.codec import Message, check_shape, encode_reply
from vhostfs.vhost_user.device import Device, Vring
from vhostfs.vhost_user.messages import (
    MAX_MEM_SLOTS,
    U64,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    FrontendReq,
    ProtocolFeatures,
    SingleMemRegion,
    VirtioFeatures,
    VringAddr,
    VringState,
    decode_mem_table,
)
from vhostfs.virtio.memory import GuestMemory

log = logging.getLogger(__name__)

# Requests whose reply carries a body; they are answered whatever the flags say.
_HAS_REPLY = frozenset(
    {
        FrontendReq.GET_FEATURES,
        FrontendReq.GET_PROTOCOL_FEATURES,
        FrontendReq.GET_VRING_BASE,
        FrontendReq.GET_QUEUE_NUM,
        FrontendReq.GET_MAX_MEM_SLOTS,
        FrontendReq.GET_CONFIG,
        FrontendReq.GET_INFLIGHT_FD,
        FrontendReq.GET_STATUS,
    }
)

Handler = Callable[["Session", Message], Awaitable[bytes | None]]


class Session:
    """Protocol state of one frontend connection (see the module docstring)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.memory = GuestMemory()
        self.features = 0  # acked virtio features
        self.protocol_features = 0  # acked protocol features
        self.owner = False
        self.vrings: dict[int, Vring] = {}
        self._running: set[int] = set()
        self.backend_channel: int | None = None  # SET_BACKEND_REQ_FD socket, owned here

    async def handle(self, message: Message) -> bytes | None:
        """Apply one request; return the reply bytes to send, if any. Closes unkept fds."""
        try:
            check_shape(message)
            handler = _HANDLERS.get(message.request)
            if handler is None:
                raise RejectedRequest(f"unsupported request {message.request}")
            reply = await handler(self, message)
            ok = True
        except RejectedRequest as exc:
            if message.request in _HAS_REPLY:
                raise VhostUserProtocolError(str(exc)) from exc
            log.warning("vhost-user: rejected %s: %s", _name(message.request), exc)
            reply, ok = None, False
        finally:
            message.close_fds()
        if reply is None and message.need_reply and self._acks:
            reply = encode_reply(message.request, U64(0 if ok else 1).pack())
        return reply

    @property
    def _acks(self) -> bool:
        return bool(self.protocol_features & ProtocolFeatures.REPLY_ACK)

    async def close(self) -> None:
        """The connection is gone: stop every ring, release fds and memory."""
        await self.device.stop_all()
        self._running.clear()
        for vring in self.vrings.values():
            vring.close()
        self.vrings.clear()
        self.memory.clear()
        if self.backend_channel is not None:
            os.close(self.backend_channel)
            self.backend_channel = None

    # -- features -------------------------------------------------------------------------

    async def _get_features(self, message: Message) -> bytes:
        return _reply_u64(message, self.device.virtio_features)

    async def _set_features(self, message: Message) -> None:
        value = U64.unpack(message.payload).value
        if value & ~self.device.virtio_features:
            raise RejectedRequest(f"features {value:#x} include bits we did not offer")
        self.features = value

    async def _get_protocol_features(self, message: Message) -> bytes:
        return _reply_u64(message, self.device.protocol_features)

    async def _set_protocol_features(self, message: Message) -> None:
        value = U64.unpack(message.payload).value
        if value & ~self.device.protocol_features:
            raise RejectedRequest(f"protocol features {value:#x} include bits not offered")
        self.protocol_features = value

    async def _get_queue_num(self, message: Message) -> bytes:
        return _reply_u64(message, self.device.max_queues)

    async def _get_max_mem_slots(self, message: Message) -> bytes:
        return _reply_u64(message, MAX_MEM_SLOTS)

    async def _set_owner(self, message: Message) -> None:
        self.owner = True

    async def _reset_owner(self, message: Message) -> None:
        # Deprecated; QEMU no longer sends it. Treat it as a device reset.
        await self._stop_all_rings()
        self.features = 0

    async def _reset_device(self, message: Message) -> None:
        await self._stop_all_rings()
        self.features = 0

    async def _set_backend_req_fd(self, message: Message) -> None:
        # The backend request channel (offered, as nydusd does) is kept for the life of the
        # connection. Nothing travels on it yet: with QEMU 7.2 there is no DAX window to map
        # into and no config space to announce, so it is held only to honour the protocol.
        fd = message.take_fd()
        if self.backend_channel is not None:
            os.close(self.backend_channel)
        self.backend_channel = fd

    # -- memory ---------------------------------------------------------------------------

    async def _set_mem_table(self, message: Message) -> None:
        regions = decode_mem_table(message.payload)
        if len(regions) != len(message.fds):
            raise RejectedRequest(f"{len(regions)} memory regions but {len(message.fds)} fds")
        await self._with_rings_stopped(lambda: self.memory.set_table(regions, message.fds))

    async def _add_mem_reg(self, message: Message) -> None:
        region = SingleMemRegion.unpack(message.payload).region()
        await self._with_rings_stopped(lambda: self.memory.add_region(region, message.fds[0]))

    async def _rem_mem_reg(self, message: Message) -> None:
        region = SingleMemRegion.unpack(message.payload).region()
        await self._with_rings_stopped(lambda: self.memory.remove_region(region))

    async def _with_rings_stopped(self, change: Callable[[], None]) -> None:
        """Running rings hold views of the old table: pause them around a change."""
        paused = sorted(self._running)
        for index in paused:
            await self._stop_ring(index)
        try:
            change()
        except VhostUserProtocolError as exc:
            raise RejectedRequest(str(exc)) from exc
        finally:
            for index in paused:
                self._maybe_start(self.vrings[index])

    # -- rings ----------------------------------------------------------------------------

    def _vring(self, index: int) -> Vring:
        if index >= self.device.max_queues:
            raise RejectedRequest(f"queue {index} beyond the {self.device.max_queues} we serve")
        vring = self.vrings.get(index)
        if vring is None:
            vring = self.vrings[index] = Vring(index)
        return vring

    def _vring_state(self, message: Message) -> tuple[Vring, int]:
        state = VringState.unpack(message.payload)
        return self._vring(state.index), state.num

    def _configurable(self, vring: Vring) -> Vring:
        if vring.index in self._running:
            raise RejectedRequest(f"queue {vring.index} is running; stop it first")
        return vring

    async def _set_vring_num(self, message: Message) -> None:
        vring, num = self._vring_state(message)
        self._configurable(vring).num = num

    async def _set_vring_addr(self, message: Message) -> None:
        addr = VringAddr.unpack(message.payload)
        try:
            addr.validate()
        except VhostUserProtocolError as exc:
            raise RejectedRequest(str(exc)) from exc
        vring = self._configurable(self._vring(addr.index))
        vring.desc, vring.avail, vring.used = addr.desc, addr.avail, addr.used

    async def _set_vring_base(self, message: Message) -> None:
        vring, base = self._vring_state(message)
        self._configurable(vring).base = base

    async def _get_vring_base(self, message: Message) -> bytes:
        vring, _ = self._vring_state(message)
        await self._stop_ring(vring.index)
        vring.started = False
        vring.replace_fd("kick", None)
        return encode_reply(message.request, VringState(vring.index, vring.base).pack())

    async def _set_vring_kick(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        if fd is None:
            raise RejectedRequest(f"queue {vring.index}: polling without a kick fd unsupported")
        if vring.index in self._running:
            await self._stop_ring(vring.index)
        vring.replace_fd("kick", fd)
        vring.started = True
        if not self.features & VirtioFeatures.PROTOCOL_FEATURES:
            vring.enabled = True  # without PROTOCOL_FEATURES rings start enabled
        self._maybe_start(vring)

    async def _set_vring_call(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        vring.replace_fd("call", fd)  # a running queue reads it at its next notification
        if vring.index in self._running:
            # A completion may have signalled the old fd just before it was replaced, and a
            # frontend need not forward that: a spurious interrupt is harmless, a lost one
            # hangs the guest.
            self.device.interrupt(vring.index)

    async def _set_vring_err(self, message: Message) -> None:
        vring, fd = self._ring_fd(message)
        vring.replace_fd("err", fd)

    async def _set_vring_enable(self, message: Message) -> None:
        vring, enable = self._vring_state(message)
        if enable not in (0, 1):
            raise RejectedRequest(f"queue {vring.index}: enable value {enable}")
        vring.enabled = bool(enable)
        if vring.enabled:
            self._maybe_start(vring)
        else:
            await self._stop_ring(vring.index)

    def _ring_fd(self, message: Message) -> tuple[Vring, int | None]:
        value = U64.unpack(message.payload).value
        if value & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise RejectedRequest(f"ring fd request with reserved bits {value:#x}")
        vring = self._vring(value & VRING_IDX_MASK)
        no_fd = bool(value & VRING_NOFD_MASK)
        if no_fd == bool(message.fds):
            raise RejectedRequest(f"queue {vring.index}: fd count does not match the no-fd bit")
        return vring, None if no_fd else message.take_fd()

    def _maybe_start(self, vring: Vring) -> None:
        if vring.index in self._running or not (vring.started and vring.enabled):
            return
        try:
            self.device.start_queue(vring, self.memory, self.features)
        except VhostfsError as exc:
            raise RejectedRequest(f"queue {vring.index} cannot start: {exc}") from exc
        self._running.add(vring.index)

    async def _stop_ring(self, index: int) -> None:
        if index not in self._running:
            return
        self._running.discard(index)
        base = await self.device.stop_queue(index)
        if base is not None:
            self.vrings[index].base = base

    async def _stop_all_rings(self) -> None:
        for index in sorted(self._running):
            await self._stop_ring(index)


def _reply_u64(message: Message, value: int) -> bytes:
    return encode_reply(message.request, U64(value).pack())


def _name(request: int) -> str:
    try:
        return FrontendReq(request).name
    except ValueError:
        return f"request {request}"


_HANDLERS: dict[int, Handler] = {
    FrontendReq.GET_FEATURES: Session._get_features,
    FrontendReq.SET_FEATURES: Session._set_features,
    FrontendReq.SET_OWNER: Session._set_owner,
    FrontendReq.RESET_OWNER: Session._reset_owner,
    FrontendReq.SET_MEM_TABLE: Session._set_mem_table,
    FrontendReq.SET_VRING_NUM: Session._set_vring_num,
    FrontendReq.SET_VRING_ADDR: Session._set_vring_addr,
    FrontendReq.SET_VRING_BASE: Session._set_vring_base,
    FrontendReq.GET_VRING_BASE: Session._get_vring_base,
    FrontendReq.SET_VRING_KICK: Session._set_vring_kick,
    FrontendReq.SET_VRING_CALL: Session._set_vring_call,
    FrontendReq.SET_VRING_ERR: Session._set_vring_err,
    FrontendReq.GET_PROTOCOL_FEATURES: Session._get_protocol_features,
    FrontendReq.SET_PROTOCOL_FEATURES: Session._set_protocol_features,
    FrontendReq.GET_QUEUE_NUM: Session._get_queue_num,
    FrontendReq.SET_VRING_ENABLE: Session._set_vring_enable,
    FrontendReq.SET_BACKEND_REQ_FD: Session._set_backend_req_fd,
    FrontendReq.GET_MAX_MEM_SLOTS: Session._get_max_mem_slots,
    FrontendReq.ADD_MEM_REG: Session._add_mem_reg,
    FrontendReq.REM_MEM_REG: Session._rem_mem_reg,
    FrontendReq.RESET_DEVICE: Session._reset_device,
}
