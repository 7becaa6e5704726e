"""An in-process vhost-user frontend that plays QEMU 7.2's part against a virtio-fs backend.

Modelled on rust-vmm's MockSplitQueue + in-process frontend test: the test process owns the
guest RAM (a memfd), the rings and the eventfds, and drives a backend over a real unix socket
with the exact message sequence QEMU 7.2 sends (reference/vhost-user-virtiofs.md, section 11):

    negotiate():  GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS,
                  SET_BACKEND_REQ_FD, SET_OWNER, GET_FEATURES, SET_VRING_CALL/ERR per queue
    start():      SET_VRING_CALL per queue, SET_FEATURES, ADD_MEM_REG x2 or SET_MEM_TABLE
                  (first start only), per queue NUM/BASE/ADDR/KICK, ENABLE 1 per queue,
                  SET_VRING_CALL per queue
    stop():       ENABLE 0 per queue, GET_VRING_BASE per queue, SET_VRING_CALL per queue
    start() again after stop(): new rings at new addresses with base 0 (a guest reboot)

Each SET_VRING_CALL carries a fresh eventfd and the previous one is closed, as QEMU switches
call fds four times per boot: a backend that keeps signalling an old fd makes waits time out.

Everything blocks with a deadline (`FrontendOptions.timeout`), so a test that goes wrong
fails instead of hanging. From trio tests against an in-process backend, call the driver
through `trio.to_thread.run_sync` so the backend's event loop keeps running.
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Final

from tests.support.driver_packed import PackedDriverRing
from tests.support.driver_ring import ChainSpec, SplitDriverRing
from tests.support.guest_memory import DriverMemory
from tests.support.vhost_control import ControlChannel, ControlTimeout
from vhostfs.vhost_user.messages import (
    U64,
    VRING_NOFD_MASK,
    FrontendReq,
    MemTableHeader,
    ProtocolFeatures,
    SingleMemRegion,
    VirtioFeatures,
    VringAddr,
    VringState,
)

# What QEMU 7.2 acks when offered (it ANDs the backend's offer with this): 0x8c2b.
QEMU_PROTOCOL_FEATURES: Final = (
    ProtocolFeatures.MQ
    | ProtocolFeatures.LOG_SHMFD
    | ProtocolFeatures.REPLY_ACK
    | ProtocolFeatures.BACKEND_REQ
    | ProtocolFeatures.BACKEND_SEND_FD
    | ProtocolFeatures.HOST_NOTIFIER
    | ProtocolFeatures.CONFIGURE_MEM_SLOTS
)
# Requests QEMU 7.2 sends with NEED_REPLY once REPLY_ACK is negotiated.
QEMU_NEED_REPLY: Final = frozenset(
    {FrontendReq.SET_MEM_TABLE, FrontendReq.ADD_MEM_REG, FrontendReq.SET_BACKEND_REQ_FD}
)
_ONE: Final = (1).to_bytes(8, "little")

Ring = SplitDriverRing | PackedDriverRing


class QueueTimeout(TimeoutError):
    """No completion arrived on a queue before the deadline."""


@dataclass(frozen=True, slots=True)
class FrontendOptions:
    request_queues: int = 1  # queues 1..N; queue 0 is hiprio
    queue_size: int = 128  # QEMU's default queue-size
    packed: bool = False  # negotiate RING_PACKED (the backend must offer it)
    event_idx: bool = True  # negotiate RING_EVENT_IDX (must be offered)
    indirect: bool = True  # negotiate RING_INDIRECT_DESC and use tables for requests
    mem_slots: bool = True  # ADD_MEM_REG when CONFIGURE_MEM_SLOTS is acked, else SET_MEM_TABLE
    protocol_features: int = QEMU_PROTOCOL_FEATURES  # the most we ack (ANDed with the offer)
    need_reply: frozenset[int] = QEMU_NEED_REPLY  # requests sent with NEED_REPLY (if acked)
    memory_size: int = 64 << 20  # bytes of guest RAM (memfd)
    timeout: float = 10.0  # seconds, for every reply and every completion wait
    check_queue_num: bool = True  # refuse to configure more queues than GET_QUEUE_NUM


@dataclass(slots=True)
class DriverQueue:
    """One virtqueue: its driver ring plus the kick, call and err eventfds we own."""

    index: int
    ring: Ring
    kick_fd: int = -1  # we write it to notify the backend
    call_fd: int = -1  # the backend writes it to interrupt us
    err_fd: int = -1
    kicks: int = 0  # notifications sent (tests of kick suppression read it)
    interrupts: int = 0  # call eventfd wake-ups consumed
    _poll: select.poll = field(default_factory=select.poll)

    def replace_call_fd(self) -> int:
        """A fresh call eventfd (the old one is closed); returns it for SET_VRING_CALL."""
        if self.call_fd >= 0:
            self._poll.unregister(self.call_fd)
            os.close(self.call_fd)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll.register(self.call_fd, select.POLLIN)
        return self.call_fd

    def kick(self) -> None:
        os.write(self.kick_fd, _ONE)
        self.kicks += 1

    def add(self, chain: ChainSpec) -> int:
        """Place a chain without notifying (batch several, then `flush()`)."""
        return self.ring.add(chain)

    def flush(self) -> None:
        """Kick the backend if the ring's notification rules ask for it."""
        if self.ring.kick_needed():
            self.kick()

    def submit(self, chain: ChainSpec) -> int:
        head = self.ring.add(chain)
        self.flush()
        return head

    def wait(self, deadline: float) -> list[tuple[int, int]]:
        """Block until at least one completion is in the used ring; returns (id, length)s.

        Waits on the call eventfd with poll(2) and the remaining time; never sleeps.
        """
        ring = self.ring
        while True:
            done = ring.poll_used()
            if done:
                return done
            if ring.arm_interrupt():
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QueueTimeout(f"queue {self.index}: no completion before the deadline")
            if self._poll.poll(remaining * 1000 + 1):
                try:
                    os.read(self.call_fd, 8)
                    self.interrupts += 1
                except BlockingIOError:
                    pass

    def close(self) -> None:
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            if fd >= 0:
                os.close(fd)
        self.kick_fd = self.call_fd = self.err_fd = -1


class Frontend:
    """A QEMU-like vhost-user frontend with its own guest memory and driver rings.

    Resource handling: owns the socket, the memfd and every eventfd; `close()` (or leaving the
    `with` block) releases them, which the backend sees as QEMU exiting.
    """

    def __init__(self, sock: socket.socket, options: FrontendOptions | None = None) -> None:
        self.options = options or FrontendOptions()
        self.control = ControlChannel(sock, self.options.timeout)
        self.mem = DriverMemory(self.options.memory_size)
        self.backend_features = 0  # GET_FEATURES
        self.acked_features = 0  # SET_FEATURES
        self.backend_protocol_features = 0  # GET_PROTOCOL_FEATURES
        self.protocol_features = 0  # SET_PROTOCOL_FEATURES
        self.queue_num: int | None = None  # GET_QUEUE_NUM (with MQ)
        self.max_mem_slots: int | None = None  # GET_MAX_MEM_SLOTS (with CONFIGURE_MEM_SLOTS)
        self.used_mem_slots = False  # memory went as ADD_MEM_REG (else SET_MEM_TABLE)
        self.backend_channel: socket.socket | None = None  # our end of SET_BACKEND_REQ_FD
        self.queues: list[DriverQueue] = []
        self.started = False
        self._memory_sent = False

    @classmethod
    def connect(
        cls, path: str, options: FrontendOptions | None = None, *, start: bool = True
    ) -> Frontend:
        """Connect to a listening backend, negotiate and (by default) start the device."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout((options or FrontendOptions()).timeout)
        sock.connect(path)
        frontend = cls(sock, options)
        try:
            frontend.negotiate()
            if start:
                frontend.start()
        except BaseException:
            frontend.close()
            raise
        return frontend

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def reply_ack(self) -> bool:
        return bool(self.protocol_features & ProtocolFeatures.REPLY_ACK)

    def deadline(self) -> float:
        return time.monotonic() + self.options.timeout

    def queue(self, index: int) -> DriverQueue:
        return self.queues[index]

    def _command(
        self, request: FrontendReq, payload: bytes = b"", fds: tuple[int, ...] = ()
    ) -> None:
        ack = self.reply_ack and request in self.options.need_reply
        self.control.command(request, payload, fds, need_reply=ack)

    def _wanted_features(self) -> int:
        opts = self.options
        wanted = VirtioFeatures.VERSION_1 | VirtioFeatures.PROTOCOL_FEATURES
        for on, bit in (
            (opts.indirect, VirtioFeatures.RING_INDIRECT_DESC),
            (opts.event_idx, VirtioFeatures.RING_EVENT_IDX),
            (opts.packed, VirtioFeatures.RING_PACKED),
        ):
            if on:
                wanted |= bit
        missing = wanted & ~self.backend_features
        if missing:
            raise RuntimeError(f"backend does not offer features {missing:#x}")
        return int(wanted)

    def negotiate(self) -> None:
        """The realize-time part of QEMU 7.2's sequence (section 11, messages 1-18)."""
        ctl = self.control
        self.backend_features = ctl.get_u64(FrontendReq.GET_FEATURES)
        if self.backend_features & VirtioFeatures.PROTOCOL_FEATURES:
            self.backend_protocol_features = ctl.get_u64(FrontendReq.GET_PROTOCOL_FEATURES)
            self.protocol_features = self.backend_protocol_features & self.options.protocol_features
            ctl.send(FrontendReq.SET_PROTOCOL_FEATURES, U64(self.protocol_features).pack())
        if self.protocol_features & ProtocolFeatures.MQ:
            self.queue_num = ctl.get_u64(FrontendReq.GET_QUEUE_NUM)
            wanted = 1 + self.options.request_queues
            if self.options.check_queue_num and self.queue_num < wanted:
                raise RuntimeError(f"backend supports {self.queue_num} queues, need {wanted}")
        if self.protocol_features & ProtocolFeatures.CONFIGURE_MEM_SLOTS:
            self.max_mem_slots = ctl.get_u64(FrontendReq.GET_MAX_MEM_SLOTS)
        if self.protocol_features & ProtocolFeatures.BACKEND_REQ:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.backend_channel = ours
            try:
                self._command(FrontendReq.SET_BACKEND_REQ_FD, b"", (theirs.fileno(),))
            finally:
                theirs.close()
        ctl.send(FrontendReq.SET_OWNER)
        again = ctl.get_u64(FrontendReq.GET_FEATURES)
        if again != self.backend_features:
            raise RuntimeError(f"GET_FEATURES changed: {self.backend_features:#x} -> {again:#x}")
        self._wanted_features()  # fail early if the options cannot be met
        self.queues = [
            DriverQueue(i, self._new_ring()) for i in range(1 + self.options.request_queues)
        ]
        for q in self.queues:
            self._send_call(q)
            q.err_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            ctl.send(FrontendReq.SET_VRING_ERR, U64(q.index).pack(), (q.err_fd,))

    def _new_ring(self) -> Ring:
        o = self.options
        cls = PackedDriverRing if o.packed else SplitDriverRing
        return cls(self.mem, o.queue_size, event_idx=o.event_idx, indirect=o.indirect)

    def _send_call(self, q: DriverQueue) -> None:
        self.control.send(FrontendReq.SET_VRING_CALL, U64(q.index).pack(), (q.replace_call_fd(),))

    def _send_memory(self) -> None:
        regions = self.mem.regions
        if self.options.mem_slots and self.protocol_features & ProtocolFeatures.CONFIGURE_MEM_SLOTS:
            for r in regions:
                payload = SingleMemRegion(
                    r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset
                ).pack()
                self._command(FrontendReq.ADD_MEM_REG, payload, (self.mem.fd,))
            self.used_mem_slots = True
        else:
            payload = MemTableHeader(len(regions)).pack() + b"".join(r.pack() for r in regions)
            self._command(FrontendReq.SET_MEM_TABLE, payload, (self.mem.fd,) * len(regions))
        self._memory_sent = True

    def start(self) -> None:
        """DRIVER_OK: memory (first time only), fresh rings at new addresses, enable."""
        if self.started:
            raise RuntimeError("device already started")
        ctl = self.control
        for q in self.queues:
            self._send_call(q)
        self.acked_features = self._wanted_features()
        ctl.send(FrontendReq.SET_FEATURES, U64(self.acked_features).pack())
        if not self._memory_sent:
            self._send_memory()
        else:
            # A restart: new rings are allocated before the old ones are freed, so their
            # addresses differ (as after a guest reboot).
            old = [q.ring for q in self.queues]
            for q in self.queues:
                q.ring = self._new_ring()
            for ring in old:
                ring.release()
        for q in self.queues:
            self._setup_queue(q)
        for q in self.queues:
            ctl.send(FrontendReq.SET_VRING_ENABLE, VringState(q.index, 1).pack())
        for q in self.queues:
            self._send_call(q)
        self.started = True

    def _setup_queue(self, q: DriverQueue) -> None:
        ctl = self.control
        ring = q.ring
        ctl.send(FrontendReq.SET_VRING_NUM, VringState(q.index, self.options.queue_size).pack())
        ctl.send(FrontendReq.SET_VRING_BASE, VringState(q.index, ring.vring_base()).pack())
        desc, avail, used = ring.addresses
        uaddr = self.mem.uaddr
        ctl.send(
            FrontendReq.SET_VRING_ADDR,
            VringAddr(q.index, 0, uaddr(desc), uaddr(used), uaddr(avail), used).pack(),
        )
        if q.kick_fd >= 0:
            os.close(q.kick_fd)
        q.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ctl.send(FrontendReq.SET_VRING_KICK, U64(q.index).pack(), (q.kick_fd,))

    def stop(self) -> list[int]:
        """Guest reset: disable every queue, GET_VRING_BASE each; returns the bases."""
        ctl = self.control
        for q in self.queues:
            ctl.send(FrontendReq.SET_VRING_ENABLE, VringState(q.index, 0).pack())
        bases = []
        for q in self.queues:
            reply = ctl.reply(FrontendReq.GET_VRING_BASE, VringState(q.index, 0).pack())
            state = VringState.unpack(reply)
            if state.index != q.index:
                raise AssertionError(f"GET_VRING_BASE({q.index}) answered for {state.index}")
            bases.append(state.num)
        for q in self.queues:
            self._send_call(q)
        self.started = False
        return bases

    def send_no_fd(self, request: FrontendReq, index: int) -> None:
        """SET_VRING_KICK/CALL/ERR with the "no fd" bit (polling mode) instead of an fd."""
        self.control.send(request, U64(index | VRING_NOFD_MASK).pack())

    def close(self) -> None:
        for q in self.queues:
            q.close()
        if self.backend_channel is not None:
            self.backend_channel.close()
        self.control.close()
        self.mem.close()


__all__ = [
    "QEMU_NEED_REPLY",
    "QEMU_PROTOCOL_FEATURES",
    "ControlTimeout",
    "DriverQueue",
    "Frontend",
    "FrontendOptions",
    "QueueTimeout",
]
