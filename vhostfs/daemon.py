"""The vhost-user listener: one frontend at a time, a nursery per frontend, clean shutdown.

Task tree: `serve` owns the listening socket and accepts a frontend; `serve_frontend` owns
that connection, its Session and a nursery in which the device runs one QueueRunner per
started ring. Leaving `serve_frontend` (end of stream, protocol error, cancellation) stops
every ring first, then closes the connection, so no worker outlives the memory it maps.

Like virtiofsd, the daemon serves one frontend (QEMU has no reconnect for vhost-user-fs);
`once=False` keeps accepting new frontends after one leaves, each with a fresh FUSE session.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

import trio

from vhostfs.errors import VhostUserProtocolError
from vhostfs.fdio import FrontendSocket
from vhostfs.vhost_user.session import Session
from vhostfs.virtiofs import DEFAULT_WORKERS, RequestHandler, VirtioFsDevice

log = logging.getLogger(__name__)


async def listen_unix(path: str) -> trio.socket.SocketType:
    """Bind a listening unix socket at `path`, replacing a stale socket file."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await listener.bind(path)
        listener.listen(1)
    except BaseException:
        listener.close()
        raise
    return listener


async def serve(
    listener: trio.socket.SocketType,
    handler: RequestHandler,
    *,
    workers: int = DEFAULT_WORKERS,
    packed: bool = True,
    once: bool = True,
) -> None:
    """Accept frontends on `listener` and serve them one after another.

    Ownership: takes the listener and closes it on return. Cancellation: stops the current
    frontend's rings and closes its connection.
    """
    with listener:
        while True:
            conn, _ = await listener.accept()
            log.info("frontend connected")
            await serve_frontend(conn, handler, workers=workers, packed=packed)
            log.info("frontend disconnected")
            if once:
                return


async def serve_frontend(
    conn: trio.socket.SocketType,
    handler: RequestHandler,
    *,
    workers: int = DEFAULT_WORKERS,
    packed: bool = True,
) -> None:
    """Serve one vhost-user connection until it closes or breaks the protocol."""
    frontend = FrontendSocket(conn)
    try:
        async with trio.open_nursery() as nursery:
            session = Session(VirtioFsDevice(handler, nursery, workers=workers, packed=packed))
            try:
                await _request_loop(frontend, session)
            finally:
                with trio.CancelScope(shield=True):
                    await session.close()
                    await handler.reset()
    finally:
        frontend.close()


async def _request_loop(frontend: FrontendSocket, session: Session) -> None:
    while True:
        try:
            message = await frontend.receive()
            if message is None:
                return
            reply = await session.handle(message)
            if reply is not None:
                await frontend.send(reply)
        except VhostUserProtocolError as exc:
            log.error("dropping the frontend: vhost-user protocol error: %s", exc)
            return
        except (BrokenPipeError, ConnectionResetError):
            return
