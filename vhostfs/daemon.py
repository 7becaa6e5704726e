"""The daemon: life cycle, the vhost-user listener, the API server, signals and shutdown.

Life cycle (`run_daemon`; reference/nydusd-interface.md sections 1.6 and 6): the state
machine starts in INIT; the start-up filesystem (`--shared-dir`/`--bootstrap`) is attached
(Mount -> READY); the vhost-user socket is bound and listening (Start -> RUNNING); only then
is the API socket created, so an API client's first answer is always RUNNING and the VMM
can connect at once. The process then runs until SIGTERM/SIGINT, `PUT /api/v1/daemon/exit`,
or, without an API socket, until the frontend leaves (virtiofsd's behaviour). With an API
socket the daemon outlives its VMM, as nydusd does, and accepts a new one.

Shutdown order (nydusd's): the API socket is closed and its file removed first, the state
goes RUNNING -> READY -> STOPPED, then every task is cancelled (rings stopped, the frontend
connection closed) and the runtime mounts are unmounted and their storage closed. The
vhost-user socket file is left in place (Kata deletes it; nydusd leaves it too).

Task tree: `serve` owns the listening socket and accepts a frontend; `serve_frontend` owns
that connection, its Session and a nursery in which the device runs one QueueRunner per
started ring. Leaving `serve_frontend` (end of stream, protocol error, cancellation) stops
every ring first, then closes the connection, so no worker outlives the memory it maps.

Frontends. Like virtiofsd, the daemon serves one frontend (QEMU has no reconnect for vhost-user-fs);
`once=False` keeps accepting new frontends after one leaves, each with a fresh FUSE session.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from vhostfs.api.configstore import ConfigStore
from vhostfs.api.mounts import MountTable
from vhostfs.api.routes import ApiContext
from vhostfs.api.server import ApiServer, close_api_socket, listen_api
from vhostfs.config import DaemonConfig
from vhostfs.errors import VhostUserProtocolError
from vhostfs.fdio import FrontendSocket
from vhostfs.fs.pseudo import PseudoFilesystem
from vhostfs.fuse.server import FuseServer
from vhostfs.state import DaemonEvent, DaemonState, StateMachine
from vhostfs.vhost_user.session import Session
from vhostfs.virtiofs import DEFAULT_POLL_US, DEFAULT_WORKERS, RequestHandler, VirtioFsDevice

log = logging.getLogger(__name__)

Startup = Callable[[MountTable], Awaitable[None]]


@dataclass(eq=False)
class RunningDaemon:
    """What `run_daemon` hands to its starter once RUNNING (tests, embedding)."""

    state: StateMachine
    mounts: MountTable
    stopping: trio.Event  # set it to shut the daemon down

    def stop(self) -> None:
        self.stopping.set()


async def run_daemon(
    config: DaemonConfig,
    startup: Startup | None = None,
    *,
    handle_signals: bool = True,
    on_stopping: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[RunningDaemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until it is told to stop (see the module docstring).

    `startup(mounts)` attaches the command line's filesystem while the state is INIT; an
    exception from it, or from binding a socket, ends the daemon before RUNNING (exit 1).
    `on_stopping` is called once when shutdown begins (the CLI arms its hard deadline).
    """
    state = StateMachine()
    state.on_change(lambda old, new: log.info("daemon state %s -> %s", old.name, new.name))
    root = PseudoFilesystem()
    stopping = trio.Event()
    store = ConfigStore()
    limiter = trio.CapacityLimiter(DEFAULT_WORKERS)
    mounts = MountTable(root, limiter=limiter, store=store, cache=config.cache)
    # The signal receiver stays installed until the daemon has fully stopped: a second
    # SIGTERM during shutdown (Kata's, or a supervisor's) must not kill the process with the
    # default action while mounts are still being closed.
    receiver = (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
        if handle_signals
        else contextlib.nullcontext(None)
    )
    with receiver as signals:
        await _run_until_stopped(config, startup, state, root, mounts, stopping, signals,
                                 on_stopping, task_status)  # fmt: skip


async def _run_until_stopped(
    config: DaemonConfig,
    startup: Startup | None,
    state: StateMachine,
    root: PseudoFilesystem,
    mounts: MountTable,
    stopping: trio.Event,
    signals: AsyncIterator[int] | None,
    on_stopping: Callable[[], None] | None,
    task_status: trio.TaskStatus[RunningDaemon],
) -> None:
    try:
        async with trio.open_nursery() as nursery:
            mounts.nursery = nursery
            if signals is not None:
                nursery.start_soon(_watch_signals, signals, stopping)
            api = await _start(config, startup, state, mounts, stopping, nursery)
            task_status.started(RunningDaemon(state, mounts, stopping))
            try:
                await stopping.wait()
            finally:
                if on_stopping is not None:
                    on_stopping()
                if api is not None:
                    with trio.CancelScope(shield=True):
                        await api.close()
                if state.state is DaemonState.RUNNING:
                    state.stop()
                nursery.cancel_scope.cancel()
    finally:
        if state.state is not DaemonState.STOPPED:
            state.stop()
        with trio.CancelScope(shield=True):
            await mounts.aclose()


class ApiTask:
    """The API server task and its socket; `close` stops it and removes the socket file."""

    def __init__(self, sock: trio.socket.SocketType, path: str, inode: int) -> None:
        self.sock, self.path, self.inode = sock, path, inode
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(self, server: ApiServer) -> None:
        try:
            with self.scope:
                await server.serve(self.sock)
        finally:
            # The listener is closed only once no task waits on it (closing it under a
            # waiting accept would raise ClosedResourceError in that task).
            close_api_socket(self.sock, self.path, self.inode)
            self.done.set()

    async def close(self) -> None:
        self.scope.cancel()
        await self.done.wait()


async def _start(
    config: DaemonConfig,
    startup: Startup | None,
    state: StateMachine,
    mounts: MountTable,
    stopping: trio.Event,
    nursery: trio.Nursery,
) -> ApiTask | None:
    """INIT -> READY -> RUNNING, then the API; returns the API socket to close at the end."""
    if startup is not None:
        await startup(mounts)
    state.fire(DaemonEvent.MOUNT)
    listener = await listen_unix(config.sock)
    state.fire(DaemonEvent.START)
    log.info("listening for the VMM on %s", config.sock)
    server = FuseServer(mounts.root)

    async def frontends() -> None:
        once = config.apisock is None
        await serve(listener, server, workers=config.workers, packed=config.packed,
                    poll_us=config.poll_us, once=once)  # fmt: skip
        log.info("the frontend left; exiting (no API socket)")
        stopping.set()

    nursery.start_soon(frontends)
    if config.apisock is None:
        return None
    sock, inode = await listen_api(config.apisock)
    api = ApiTask(sock, config.apisock, inode)
    ctx = ApiContext(
        state, mounts, mounts.store, config.id, config.supervisor, set_log_level=_set_log_level
    )
    nursery.start_soon(api.run, ApiServer(ctx, on_exit=stopping.set))
    log.info("API listening on %s", config.apisock)
    return api


def _set_log_level(level: int) -> None:
    logging.getLogger().setLevel(level)


async def _watch_signals(signals: AsyncIterator[int], stopping: trio.Event) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.info("%s received while already shutting down", name)
        else:
            log.info("%s received, shutting down", name)
            stopping.set()


# The longest path a unix socket can be bound to (sun_path is 108 bytes with its NUL).
_SUN_PATH_MAX: Final = 107


async def listen_unix(path: str) -> trio.socket.SocketType:
    """Bind a listening unix socket at `path`, replacing a stale socket file.

    The socket file appears only once it accepts connections: it is bound and listening
    under a short temporary name in the same directory and then renamed into place, so a
    starter that waits for the file (virtiofsd-style, no API socket) never sees a refusal.
    A non-socket file at `path` is an error (EADDRINUSE), never replaced.
    """
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        else:
            raise OSError(errno.EADDRINUSE, "Address already in use (not a socket)", path)
    except FileNotFoundError:
        pass
    temporary = os.path.join(os.path.dirname(path), f".vhostfs-{os.getpid()}.sock")
    if len(os.fsencode(temporary)) > _SUN_PATH_MAX:
        temporary = path  # the temporary name would not fit in sun_path: bind in place
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if temporary != path:
            _remove(temporary)  # left by an earlier process with our pid
        await listener.bind(temporary)
        listener.listen(1)
        if temporary != path:
            os.rename(temporary, path)
    except BaseException:
        listener.close()
        if temporary != path:
            _remove(temporary)
        raise
    return listener


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def serve(
    listener: trio.socket.SocketType,
    handler: RequestHandler,
    *,
    workers: int = DEFAULT_WORKERS,
    packed: bool = True,
    poll_us: int = DEFAULT_POLL_US,
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
            await serve_frontend(conn, handler, workers=workers, packed=packed, poll_us=poll_us)
            log.info("frontend disconnected")
            if once:
                return


async def serve_frontend(
    conn: trio.socket.SocketType,
    handler: RequestHandler,
    *,
    workers: int = DEFAULT_WORKERS,
    packed: bool = True,
    poll_us: int = DEFAULT_POLL_US,
) -> None:
    """Serve one vhost-user connection until it closes or breaks the protocol."""
    frontend = FrontendSocket(conn)
    try:
        async with trio.open_nursery() as nursery:
            device = VirtioFsDevice(handler, nursery, workers=workers, packed=packed,
                                    poll_us=poll_us)  # fmt: skip
            session = Session(device)
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
