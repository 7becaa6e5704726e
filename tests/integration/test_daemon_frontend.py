"""The whole data path in one process: test frontend -> vhost-user -> rings -> FUSE -> fs.

The daemon runs in this trio loop on a real unix socket; the frontend driver (which blocks,
like QEMU's vhost-user code) runs in a worker thread and plays QEMU 7.2's message sequence
with a memfd as guest memory. Covers split and packed rings, several request queues, many
requests in flight, and a stop/restart on the same connection (a guest reboot).
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseDriver
from tests.support.memoryfs import MemoryFilesystem
from vhostfs import daemon
from vhostfs.fuse.filesystem import ROOT_INO
from vhostfs.fuse.server import FuseServer

T = TypeVar("T")
CONTENT = bytes(range(256)) * 1024  # 256 KiB


def sample_fs(*, awaiting: bool = False, inline_root: bool = False,
              claims_inline: bool = False) -> MemoryFilesystem:  # fmt: skip
    fs = MemoryFilesystem(awaiting=awaiting, inline_root=inline_root,
                          claims_inline=claims_inline)  # fmt: skip
    d = fs.add(ROOT_INO, b"dir", stat.S_IFDIR | 0o755)
    fs.add(d, b"file", stat.S_IFREG | 0o644, data=CONTENT)
    fs.add(ROOT_INO, b"link", stat.S_IFLNK | 0o777, target=b"dir/file")
    return fs


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


@pytest.fixture(
    params=[(False, False), (True, True), (True, False)],
    ids=["inline", "handed-over", "trio-workers"],
)
async def socket_path(tmp_path: Path, nursery: trio.Nursery, request: pytest.FixtureRequest) -> str:
    """A daemon over the sample tree. "inline": a queue thread serves every request itself;
    "handed-over": READs really await, so the queue thread hands them to trio workers;
    "trio-workers": every node may await, so trio workers serve the queue (no thread)."""
    awaiting, inline_root = request.param
    return await serve_fs(tmp_path, nursery, sample_fs(awaiting=awaiting, inline_root=inline_root))


async def serve_fs(tmp_path: Path, nursery: trio.Nursery, fs: MemoryFilesystem) -> str:
    """A daemon serving `fs` in this trio loop; returns its vhost-user socket path."""
    path = str(tmp_path / "vhost.sock")
    listener = await daemon.listen_unix(path)
    server = FuseServer(fs)
    nursery.start_soon(lambda: daemon.serve(listener, server, once=False))
    return path


def read_file(fuse: FuseDriver) -> bytes:
    fuse.init()
    d = fuse.lookup(ROOT_INO, b"dir")
    f = fuse.lookup(d.nodeid, b"file")
    assert f.attr.size == len(CONTENT)
    opened = fuse.open(f.nodeid)
    data = fuse.read(f.nodeid, opened.fh, 0, 1 << 20)
    fuse.release(f.nodeid, opened.fh)
    assert fuse.readlink(fuse.lookup(ROOT_INO, b"link").nodeid) == b"dir/file"
    fuse.forget(f.nodeid)
    return data


@pytest.mark.parametrize(
    "options",
    [
        FrontendOptions(),
        FrontendOptions(packed=True),
        FrontendOptions(event_idx=False),
        FrontendOptions(indirect=False, queue_size=1024),
        FrontendOptions(mem_slots=False),
        FrontendOptions(request_queues=2),
    ],
    ids=["split", "packed", "no-event-idx", "direct-chains", "mem-table", "two-queues"],
)
async def test_read_a_file(socket_path: str, options: FrontendOptions) -> None:
    def run() -> bytes:
        with Frontend.connect(socket_path, options) as frontend:
            return read_file(FuseDriver(frontend, queue=options.request_queues))

    assert await in_thread(run) == CONTENT


async def test_guest_reboot_restarts_rings_and_session(socket_path: str) -> None:
    def run() -> list[bytes]:
        with Frontend.connect(socket_path, FrontendOptions(packed=True)) as frontend:
            first = read_file(FuseDriver(frontend))
            bases = frontend.stop()
            frontend.start()
            second = read_file(FuseDriver(frontend))
            assert bases[1] != 0  # the request queue had consumed requests
            return [first, second]

    assert await in_thread(run) == [CONTENT, CONTENT]


async def test_many_requests_in_flight(socket_path: str) -> None:
    def run() -> list[bytes]:
        with Frontend.connect(socket_path, FrontendOptions(queue_size=256)) as frontend:
            fuse = FuseDriver(frontend)
            fuse.init()
            d = fuse.lookup(ROOT_INO, b"dir")
            f = fuse.lookup(d.nodeid, b"file")
            fh = fuse.open(f.nodeid).fh
            calls = [fuse.read_call(f.nodeid, fh, k * 4096, 4096) for k in range(64)]
            fuse.submit(*calls)
            for call in calls:
                fuse.wait_for(call)
            return [fuse.reply(call).ok().payload for call in calls]

    chunks = await in_thread(run)
    assert b"".join(chunks) == CONTENT


async def test_a_request_that_awaits_in_the_queue_thread_fails_alone(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A filesystem that claims its READ never awaits, then awaits: that request gets an
    empty reply and an error in the log; the queue thread and the session go on."""
    path = await serve_fs(tmp_path, nursery, sample_fs(awaiting=True, claims_inline=True))

    def run() -> tuple[int, bytes]:
        with Frontend.connect(path, FrontendOptions()) as frontend:
            fuse = FuseDriver(frontend)
            fuse.init()
            d = fuse.lookup(ROOT_INO, b"dir")
            f = fuse.lookup(d.nodeid, b"file")
            fh = fuse.open(f.nodeid).fh
            call = fuse.read_call(f.nodeid, fh, 0, 4096)
            fuse.submit(call)
            fuse.wait_for(call)
            used = call.used_len
            target = fuse.readlink(fuse.lookup(ROOT_INO, b"link").nodeid)
            return used, target

    used, target = await in_thread(run)
    assert used == 0
    assert target == b"dir/file"
    assert "tried to await in the queue thread" in caplog.text


@pytest.mark.parametrize(("inline_root", "threaded"), [(True, True), (False, False)])
async def test_a_queue_thread_serves_exports_whose_requests_run_inline(
    tmp_path: Path, nursery: trio.Nursery, inline_root: bool, threaded: bool
) -> None:
    """A queue thread for a passthrough-like export; trio workers for one whose every request
    may await (a RAFS image), where a thread would only add a second wake-up."""
    path = await serve_fs(tmp_path, nursery, sample_fs(awaiting=True, inline_root=inline_root))

    def run() -> tuple[bytes, bool]:
        with Frontend.connect(path, FrontendOptions()) as frontend:
            data = read_file(FuseDriver(frontend))
            return data, any(t.name == "vhostfs-queue-1" for t in threading.enumerate())

    data, seen = await in_thread(run)
    assert data == CONTENT
    assert seen == threaded
