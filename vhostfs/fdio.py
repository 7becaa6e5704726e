"""The trio edge for fds: the vhost-user socket with SCM_RIGHTS, and eventfds.

Everything here is thin: bytes and fds in and out, no protocol knowledge. Calls try the
non-blocking syscall first and wait only when it would block (trio's own socket wrappers do
this), and every fd has one owner that closes it once.
"""

from __future__ import annotations

import array
import os
import socket

import trio

from vhostfs.errors import VhostUserProtocolError
from vhostfs.vhost_user.codec import NEED_DATA, Decoder, Message
from vhostfs.vhost_user.messages import MAX_FDS
from vhostfs.virtio.memory import close_fds

_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds


class FrontendSocket:
    """One accepted vhost-user connection: receives requests, sends replies."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._decoder = Decoder()

    async def receive(self) -> Message | None:
        """The next request, or None at end of stream. The caller owns the message's fds.

        Reads exactly the bytes of one message so that fds are never attributed to the
        wrong one. Raises VhostUserProtocolError on framing errors or truncated ancillary
        data (fds lost in transit cannot be recovered).
        """
        while True:
            message = self._decoder.next_message()
            if message is not NEED_DATA:
                return message
            data, ancdata, flags, _ = await self._sock.recvmsg(self._decoder.wanted(), _ANCILLARY)
            fds = _fds_from(ancdata)
            if flags & socket.MSG_CTRUNC:
                close_fds(fds)
                raise VhostUserProtocolError("ancillary data truncated: too many fds")
            if not data:
                close_fds(fds)
                if self._decoder.pending_bytes:
                    raise VhostUserProtocolError("connection closed in the middle of a message")
                return None
            self._decoder.feed(data, fds)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self._sock.send(view)
            view = view[sent:]

    def close(self) -> None:
        self._decoder.close()
        self._sock.close()


def signal_eventfd(fd: int) -> None:
    """Add one to an eventfd counter (a guest interrupt or an error notification)."""
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass  # the counter is saturated: the reader has a wakeup pending anyway


def drain_eventfd(fd: int) -> None:
    """Reset a non-blocking eventfd after it became readable (kicks coalesce)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
