"""A sans-I/O HTTP/1.x server connection for the API socket, on top of h11.

reference/nydusd-interface.md section 2.1 (what nydusd's dbs-uhttp server accepts). The
caller feeds bytes in (`receive_data`), pulls whole requests out (`next_request`) and gets
the bytes of each reply from `send`; nothing here touches a socket.

Theory of operation. Every request gets a fresh h11 connection: we first find the end of
the request head ourselves, check the limits h11 does not know (each line at most MAX_LINE
bytes, a head of at most MAX_HEAD), add the `Host` header HTTP/1.1 demands but nydusd's
clients need not send, then let h11 parse head and body. Whatever h11 leaves over after the
request (a pipelined request) becomes the start of the next head. Keep-alive follows h11:
after a reply, `keep_alive` says whether another request may follow.

Limits and rules (upstream's):

* request line and each header line: at most MAX_LINE (1024) bytes including CRLF;
* body: at most MAX_BODY (51200) bytes, declared or chunked; a GET with a body is refused;
  `Content-Length: 0` means "no body" (`Request.body is None`);
* `Expect: 100-continue` is answered with a 100 before the body is read;
* origin-form (`/api/v1/daemon`) and absolute-form (`http://localhost/api/v1/daemon`)
  targets; the query is form-urlencoded (percent-decoding, `+` is a space) and the first
  occurrence of a key wins;
* a malformed request gets 400 with `{"error": "<reason>\\nAll previous unanswered
  requests will be dropped."}` and the connection is closed (`ProtocolError`).

Invariant: any byte sequence either yields requests, NEED_DATA, CLOSED or ProtocolError;
nothing else escapes (checked by a property test, whole and byte by byte).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import h11

MAX_LINE: Final = 1024  # bytes per request/header line, CRLF included (dbs-uhttp)
MAX_HEAD: Final = 32 * 1024  # bytes of a whole request head; ours, bounds buffering
MAX_BODY: Final = 51_200  # bytes (dbs-uhttp's payload limit)
SERVER: Final = "Nydus API"
DROPPED: Final = "\nAll previous unanswered requests will be dropped."
_END_OF_HEAD: Final = re.compile(rb"\r?\n\r?\n")
_HOST: Final = re.compile(rb"^host[ \t]*:", re.IGNORECASE)
REASONS: Final = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 404: b"Not Found",
                  500: b"Internal Server Error", 501: b"Not Implemented",
                  503: b"Service Unavailable"}


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Sentinel("NEED_DATA")  # feed more bytes, then ask again
CLOSED: Final = _Sentinel("CLOSED")  # the client closed cleanly between requests


class ProtocolError(Exception):
    """The client sent something that is not an acceptable HTTP request.

    Answer with `error_response(reason)` and close the connection.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    method: str  # "GET", "PUT", ...
    path: str  # the target's path, not percent-decoded (routes match it exactly)
    query: dict[str, str] = field(default_factory=dict)  # decoded; first occurrence wins
    body: bytes | None = None  # None: no body or Content-Length 0


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes | None = None  # JSON text; None for 204

    @classmethod
    def json(cls, status: int, value: object) -> Response:
        return cls(status, json.dumps(value).encode())


def error_response(reason: str) -> Response:
    """dbs-uhttp's answer to a request it could not parse (not the {code,message} shape)."""
    return Response.json(400, {"error": reason + DROPPED})


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """(path, query) of an origin-form or absolute-form request target."""
    if not target.startswith("/"):
        parts = urlsplit(target)
        if not parts.scheme or not parts.netloc:
            raise ProtocolError(f"Invalid URI: {target}")
        path, query = parts.path or "/", parts.query
    else:
        path, _, query = target.partition("?")
        path = path.partition("#")[0]
    pairs: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        pairs.setdefault(key, value)
    return path, pairs


def _check_lines(lines: list[bytes]) -> None:
    """Each line plus its CRLF must fit in MAX_LINE (checked early for unfinished lines)."""
    for number, line in enumerate(lines):
        if len(line.rstrip(b"\r")) + 2 > MAX_LINE:
            raise ProtocolError("Request line too long" if number == 0 else "Header line too long")


def _check_head(head: bytes) -> bytes:
    """Enforce line limits; add `Host` to an HTTP/1.1 head lacking one (h11 insists)."""
    lines = head.split(b"\n")
    _check_lines(lines)
    request_line = lines[0].rstrip(b"\r")
    if request_line.endswith(b"HTTP/1.1") and not any(_HOST.match(x) for x in lines[1:]):
        rest = b"".join(b"\n" + line for line in lines[1:])
        head = request_line + b"\r\nHost: localhost" + (b"\r" if rest else b"") + rest
    return head


class HttpConnection:
    """Server side of one API connection (sans I/O).

    Usage: `receive_data(bytes)` (b"" at end of input), then `next_request()` until it
    returns NEED_DATA or CLOSED; answer each Request with `send(response)`, and send
    `data_to_send()` whenever it is non-empty (the 100 Continue interim reply).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()  # bytes not yet handed to h11
        self._eof = False
        self._h11: h11.Connection | None = None
        self._pending: Request | None = None
        self._body = bytearray()
        self._head: h11.Request | None = None
        self._out = bytearray()
        self.keep_alive = True  # False once the connection must close after the reply

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        self._buffer += data

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def next_request(self) -> Request | _Sentinel:
        """The next complete request, NEED_DATA or CLOSED; raises ProtocolError."""
        if self._pending is not None:
            raise RuntimeError("answer the previous request first")
        if self._h11 is None and not self._start():
            if self._eof:
                if self._buffer.strip():
                    raise ProtocolError("Connection closed in the middle of a request")
                return CLOSED
            return NEED_DATA
        return self._pump()

    def _start(self) -> bool:
        """Hand the next request head to a fresh h11 connection, once it is complete."""
        while self._buffer[:1] == b"\n" or self._buffer[:2] == b"\r\n":
            del self._buffer[: 1 if self._buffer[:1] == b"\n" else 2]
        end = _END_OF_HEAD.search(self._buffer)
        if end is None:
            if len(self._buffer) > MAX_HEAD:
                raise ProtocolError("Request head too large")
            _check_lines(bytes(self._buffer).split(b"\n"))
            return False
        head = _check_head(bytes(self._buffer[: end.start()])) + b"\r\n\r\n"
        rest = bytes(self._buffer[end.end():])
        self._buffer.clear()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._h11.receive_data(head + rest)
        if self._eof:
            self._h11.receive_data(b"")
        return True

    def _pump(self) -> Request | _Sentinel:
        assert self._h11 is not None
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(str(exc) or "Invalid request") from None
            if event is h11.NEED_DATA:
                if self._buffer or self._eof:
                    self._h11.receive_data(bytes(self._buffer))
                    self._buffer.clear()
                    if self._eof and self._h11.their_state is not h11.CLOSED:
                        self._h11.receive_data(b"")
                    continue
                return NEED_DATA
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY:
                    raise ProtocolError("Payload too large")
            elif isinstance(event, h11.EndOfMessage):
                return self._finish()
            elif isinstance(event, h11.ConnectionClosed):
                raise ProtocolError("Connection closed in the middle of a request")

    def _on_head(self, event: h11.Request) -> None:
        assert self._h11 is not None
        length = 0
        for name, value in event.headers:
            if name == b"content-length":
                length = int(value)
        if length > MAX_BODY:
            raise ProtocolError("Payload too large")
        chunked = any(n == b"transfer-encoding" for n, _ in event.headers)
        if event.method == b"GET" and (length > 0 or chunked):
            raise ProtocolError("GET requests cannot carry a body")
        self._head = event
        if self._h11.they_are_waiting_for_100_continue:
            interim = h11.InformationalResponse(status_code=100, headers=[])
            self._out += self._h11.send(interim) or b""

    def _finish(self) -> Request:
        assert self._head is not None
        try:
            target = self._head.target.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("Invalid URI") from None
        path, query = parse_target(target)
        body = bytes(self._body) if self._body else None
        self._pending = Request(self._head.method.decode("ascii"), path, query, body)
        self._body.clear()
        return self._pending

    def send(self, response: Response) -> bytes:
        """Bytes of the reply to the pending request (or to a ProtocolError)."""
        headers = [("Server", SERVER), ("Content-Type", "application/json")]
        body = response.body or b""
        if response.status != 204:
            headers.append(("Content-Length", str(len(body))))
        conn, self._h11 = self._h11, None
        self._pending = None
        if conn is None or conn.our_state is not h11.SEND_RESPONSE or response.status == 503:
            # Not in a request cycle h11 knows (a refused head): write it by hand and close.
            self.keep_alive = False
            return _raw_response(response.status, [*headers, ("Connection", "close")], body)
        if conn.their_state is not h11.DONE:
            headers.append(("Connection", "close"))
        data = conn.send(h11.Response(status_code=response.status, headers=headers,
                                      reason=REASONS.get(response.status, b"")))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"" if body else b"")
        data += conn.send(h11.EndOfMessage()) or b""
        if _cycle_done(conn):
            leftover, closed = conn.trailing_data
            self._buffer[:0] = leftover
            self._eof = self._eof or closed
        else:
            self.keep_alive = False
        return data


def _cycle_done(conn: h11.Connection) -> bool:
    """Both sides finished the request cycle: the connection may carry another one."""
    return conn.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}


def _raw_response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b""))]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
