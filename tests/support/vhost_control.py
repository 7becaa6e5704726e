"""The frontend end of the vhost-user control socket: framing, fds, replies, REPLY_ACK.

vhost-user protocol version 1 (QEMU docs/interop/vhost-user.rst; reference sections 2-3).
Every message is `Header` (12 bytes) + payload, with any fds in one SCM_RIGHTS control
message on the same sendmsg. Requests that always have a reply (GET_*) are answered with the
same request code and flags = version | REPLY; other requests are answered with a u64 status
only when REPLY_ACK was negotiated and the request carried NEED_REPLY.

Blocking I/O with a deadline on every receive: a backend that never answers turns into
`ControlTimeout`, never a hang. `send_raw` exists for bad-input tests (arbitrary bytes/fds).
"""

from __future__ import annotations

import array
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vhostfs.vhost_user.messages import U64, VERSION, FrontendReq, Header, HeaderFlags

MAX_REPLY_FDS: Final = 8


class ControlTimeout(TimeoutError):
    """The backend did not answer before the deadline."""


class BackendRefused(RuntimeError):
    """The backend answered a NEED_REPLY request with a non-zero status."""

    def __init__(self, request: int, status: int) -> None:
        super().__init__(f"{_name(request)} acked with status {status:#x}")
        self.request = request
        self.status = status


class BadReply(AssertionError):
    """The backend's reply breaks the protocol (wrong code, flags or size)."""


class BackendClosed(ConnectionError):
    """The backend closed the control socket."""


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    payload: bytes
    fds: tuple[int, ...]  # owned by the receiver: close them


def _name(request: int) -> str:
    try:
        return FrontendReq(request).name
    except ValueError:
        return f"request {request}"


class ControlChannel:
    """One connected vhost-user socket, frontend side.

    Resource handling: owns `sock`; fds passed to `send` stay owned by the caller (the kernel
    duplicates them into the backend).
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.sent: list[tuple[int, int, int]] = []  # (request, flags, fd count), in order

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Write arbitrary bytes (and fds) to the socket, as one sendmsg."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.settimeout(self.timeout)
        sent = self.sock.sendmsg([data], ancillary)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def send(
        self, request: int, payload: bytes = b"", fds: Sequence[int] = (), flags: int = VERSION
    ) -> None:
        """Send one well-formed message."""
        self.sent.append((request, flags, len(fds)))
        self.send_raw(Header(request, flags, len(payload)).pack() + payload, fds)

    def _recv_exact(self, size: int, deadline: float, fds: list[int]) -> bytes:
        data = bytearray()
        while len(data) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ControlTimeout(f"no reply within {self.timeout} s")
            self.sock.settimeout(remaining)
            try:
                chunk, anc, msg_flags, _ = self.sock.recvmsg(
                    size - len(data), socket.CMSG_SPACE(MAX_REPLY_FDS * 4)
                )
            except TimeoutError as exc:
                raise ControlTimeout(f"no reply within {self.timeout} s") from exc
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(blob[: len(blob) - len(blob) % 4])
                    fds.extend(got)
            if msg_flags & socket.MSG_CTRUNC:
                raise BadReply("reply carried more fds than fit")
            if not chunk:
                raise BackendClosed("backend closed the vhost-user socket")
            data += chunk
        return bytes(data)

    def recv(self, deadline: float | None = None) -> Message:
        """Receive one message (a reply, or anything the backend sends)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        fds: list[int] = []
        header = Header.unpack(self._recv_exact(Header.SIZE, deadline, fds))
        payload = self._recv_exact(header.size, deadline, fds) if header.size else b""
        return Message(header, payload, tuple(fds))

    def reply(
        self, request: int, payload: bytes = b"", fds: Sequence[int] = (), flags: int = VERSION
    ) -> bytes:
        """Send a request that has a reply body and return that body (checked framing)."""
        self.send(request, payload, fds, flags)
        msg = self.recv()
        for fd in msg.fds:
            os.close(fd)
        if msg.header.request != request:
            raise BadReply(f"reply to {_name(request)} carries {_name(msg.header.request)}")
        if msg.header.flags & ~HeaderFlags.VERSION_MASK != HeaderFlags.REPLY or (
            msg.header.flags & HeaderFlags.VERSION_MASK != VERSION
        ):
            raise BadReply(f"reply to {_name(request)} has flags {msg.header.flags:#x}")
        return msg.payload

    def get_u64(self, request: int) -> int:
        payload = self.reply(request)
        if len(payload) != U64.SIZE:
            raise BadReply(f"{_name(request)} reply of {len(payload)} bytes")
        return U64.unpack(payload).value

    def command(
        self, request: int, payload: bytes = b"", fds: Sequence[int] = (), need_reply: bool = False
    ) -> None:
        """Send a request without a reply body; with `need_reply`, wait for a zero ack."""
        if not need_reply:
            self.send(request, payload, fds)
            return
        status = U64.unpack(self._checked_ack(request, payload, fds)).value
        if status:
            raise BackendRefused(request, status)

    def _checked_ack(self, request: int, payload: bytes, fds: Sequence[int]) -> bytes:
        ack = self.reply(request, payload, fds, VERSION | HeaderFlags.NEED_REPLY)
        if len(ack) != U64.SIZE:
            raise BadReply(f"ack for {_name(request)} of {len(ack)} bytes")
        return ack

    def close(self) -> None:
        self.sock.close()
