"""vhost-user message framing without I/O (in the manner of h11).

The caller feeds the bytes and fds it received and pulls complete messages out; `NEED_DATA`
means more input is required. Encoding a reply returns bytes for the caller to send. fds ride
as SCM_RIGHTS on the sendmsg that carries a message, so the I/O edge reads exactly one header
(with its fds) and then exactly its payload; fds fed while a message is being assembled belong
to that message.

Framing errors (a payload larger than any legal one, fds attached to nothing) raise
VhostUserProtocolError: the stream cannot be trusted after them, so the connection is dropped.
Request-level checks (payload size and fd count per request) happen in `check_shape`, which
the session calls, so that an unknown request can still be consumed and answered.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from vhostfs.errors import RejectedRequest, VhostUserProtocolError
from vhostfs.vhost_user.messages import (
    FD_COUNTS,
    MAX_FDS,
    MAX_PAYLOAD,
    PAYLOAD_SIZES,
    VERSION,
    Header,
    HeaderFlags,
)
from vhostfs.virtio.memory import close_fds


class _NeedData(enum.Enum):
    NEED_DATA = enum.auto()


NEED_DATA = _NeedData.NEED_DATA


@dataclass(slots=True)
class Message:
    """One decoded request. The receiver owns `fds` and must close those it does not keep."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlags.NEED_REPLY)

    def take_fd(self) -> int:
        """Remove and return the message's single fd (the receiver now owns it)."""
        return self.fds.pop(0)

    def close_fds(self) -> None:
        close_fds(self.fds)
        self.fds.clear()


class Decoder:
    """Assembles messages from a byte stream and the fds received alongside it."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fds: list[int] = []

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def wanted(self) -> int:
        """How many more bytes complete the current message (header first)."""
        if len(self._buffer) < Header.SIZE:
            return Header.SIZE - len(self._buffer)
        header = Header.unpack_from(self._buffer)
        return max(Header.SIZE + header.size - len(self._buffer), 0)

    def feed(self, data: bytes, fds: list[int]) -> None:
        self._buffer += data
        self._fds.extend(fds)
        if len(self._fds) > MAX_FDS:
            raise VhostUserProtocolError(f"{len(self._fds)} fds pending, at most {MAX_FDS}")

    def next_message(self) -> Message | _NeedData:
        if len(self._buffer) < Header.SIZE:
            if self._fds and not self._buffer:
                raise VhostUserProtocolError("fds received without a message")
            return NEED_DATA
        header = Header.unpack_from(self._buffer)
        if header.flags & HeaderFlags.VERSION_MASK != VERSION:
            raise VhostUserProtocolError(f"unsupported message version in flags {header.flags:#x}")
        if header.size > MAX_PAYLOAD:
            raise VhostUserProtocolError(
                f"payload of {header.size} bytes (request {header.request})"
            )
        end = Header.SIZE + header.size
        if len(self._buffer) < end:
            return NEED_DATA
        payload = bytes(self._buffer[Header.SIZE : end])
        del self._buffer[:end]
        fds, self._fds = self._fds, []
        return Message(header.request, header.flags, payload, fds)

    def close(self) -> None:
        close_fds(self._fds)
        self._fds = []


def check_shape(message: Message) -> None:
    """Reject a known request whose payload size or fd count is not what it must be."""
    expected = PAYLOAD_SIZES.get(message.request)
    if expected is not None and len(message.payload) != expected:
        raise RejectedRequest(
            f"request {message.request} with {len(message.payload)} payload bytes, "
            f"expected {expected}"
        )
    low, high = FD_COUNTS.get(message.request, (0, 0))
    if not low <= len(message.fds) <= high:
        raise RejectedRequest(
            f"request {message.request} with {len(message.fds)} fds, expected {low}..{high}"
        )


def encode_reply(request: int, payload: bytes) -> bytes:
    """A reply: the request's code, flags = version | REPLY, then the payload."""
    return Header(request, VERSION | HeaderFlags.REPLY, len(payload)).pack() + payload
