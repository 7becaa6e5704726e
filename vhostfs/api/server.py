"""The API socket: a trio unix-socket server speaking HTTP/1.x through `api.http`.

reference/nydusd-interface.md sections 2.1 and 1.6. One task per client connection, all in
the server's nursery; each connection runs requests one after another (HTTP/1.1 without
pipelined replies), but connections run concurrently, so a slow mount never delays the
readiness probe on another connection (upstream serializes everything).

Connections: nydusd allows 10 and answers the 11th with 503; Go's HTTP client keeps idle
connections for 10 s, so we allow MAX_CONNECTIONS (256) and answer beyond that with
nydusd's 503 body `{"error": "Too many open connections"}`.

The socket file: any existing file at the path is unlinked before binding (upstream does
the same), and `close_api_socket` unlinks it again at shutdown, but only if it is still the
socket we bound (same inode), so a successor daemon's socket is never removed.

Error handling: a malformed request gets dbs-uhttp's 400 and the connection is closed; a
bug in a handler gets a 500 `{"code": "UNDEFINED", "message": "Internal(...)"}` and a logged
traceback, and the daemon goes on (upstream's handler thread panics instead).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Final

import trio

from vhostfs.api.errors import HttpFailure, rust_str
from vhostfs.api.http import (
    CLOSED,
    NEED_DATA,
    HttpConnection,
    ProtocolError,
    Request,
    Response,
    error_response,
)
from vhostfs.api.routes import ApiContext, dispatch

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 256
RECEIVE_SIZE: Final = 65536
BACKLOG: Final = 128
ACCEPT_BACKOFF: Final = 0.1  # seconds between accept attempts while out of fds
TOO_MANY: Final = Response.json(503, {"error": "Too many open connections"})


async def listen_api(path: str) -> tuple[trio.socket.SocketType, int]:
    """Bind the API socket at `path` (replacing whatever is there); returns (socket, inode)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(BACKLOG)
        inode = os.stat(path).st_ino
    except BaseException:
        sock.close()
        raise
    return sock, inode


def close_api_socket(sock: trio.socket.SocketType, path: str, inode: int) -> None:
    """Close the listener and remove its file if it is still ours."""
    sock.close()
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


class ApiServer:
    """Serves `ctx` on an already listening socket until cancelled.

    `on_exit` is called after the reply to `PUT /api/v1/daemon/exit` has been written, so the
    client always gets its 204 before the daemon starts shutting down.
    """

    def __init__(self, ctx: ApiContext, on_exit: Callable[[], None]) -> None:
        self.ctx = ctx
        self.on_exit = on_exit
        self.connections = 0

    async def serve(self, listener: trio.socket.SocketType) -> None:
        """Accept clients forever. Cancellation closes every client connection."""
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:  # EMFILE and friends: log, back off, keep serving
                    log.warning("API accept failed: %s", exc)
                    await trio.sleep(ACCEPT_BACKOFF)  # as trio.serve_listeners does
                    continue
                nursery.start_soon(self._client, conn)

    async def _client(self, sock: trio.socket.SocketType) -> None:
        with sock:
            if self.connections >= MAX_CONNECTIONS:
                await _send(sock, HttpConnection().send(TOO_MANY))
                return
            self.connections += 1
            try:
                await self._requests(sock, HttpConnection())
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                self.connections -= 1

    async def _requests(self, sock: trio.socket.SocketType, conn: HttpConnection) -> None:
        while True:
            try:
                request = conn.next_request()
            except ProtocolError as exc:
                log.debug("API: malformed request: %s", exc.reason)
                await _send(sock, conn.send(error_response(exc.reason)))
                return
            if request is CLOSED:
                return
            if request is NEED_DATA:
                await _send(sock, conn.data_to_send())
                conn.receive_data(await sock.recv(RECEIVE_SIZE))
                continue
            assert isinstance(request, Request)
            await _send(sock, conn.send(await self._answer(request)))
            if self.ctx.exit_requested:
                self.on_exit()
            if not conn.keep_alive:
                return

    async def _answer(self, request: Request) -> Response:
        try:
            response = await dispatch(self.ctx, request)
        except Exception as exc:  # a bug: answer 500, keep the daemon alive
            log.exception("API %s %s failed", request.method, request.path)
            response = HttpFailure(500, f"Internal({rust_str(repr(exc))})").response()
        log.debug("API %s %s -> %d", request.method, request.path, response.status)
        return response


async def _send(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]
