"""Large READs of a passthrough export, done by the kernel off the queue thread (io_uring).

A real host directory, the daemon in this trio loop, the test frontend in a worker thread.
With many READs in flight the queue thread hands their copies to io_uring (offload.py);
every reply must still hold exactly the file's bytes, and a queue stopped while copies are
under way must answer GET_VRING_BASE only once every request it took has been completed.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseCall, FuseDriver
from vhostfs import daemon, queuethread
from vhostfs.fs.factory import open_passthrough
from vhostfs.fs.pseudo import PseudoFilesystem
from vhostfs.fuse.filesystem import ROOT_INO
from vhostfs.fuse.server import FuseServer
from vhostfs.iouring import IoUring
from vhostfs.queuethread import QueueThread

T = TypeVar("T")
READ = 128 << 10
READS = 32
CONTENT = random.Random(7).randbytes(READ * READS)
REQUESTS_BEFORE_READS = 3  # INIT, LOOKUP, OPEN on the request queue
DEADLINE = 30.0  # seconds; what is waited for happens in milliseconds


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def serve_share(tmp_path: Path, nursery: trio.Nursery) -> str:
    share = tmp_path / "share"
    share.mkdir()
    (share / "big").write_bytes(CONTENT)
    root = PseudoFilesystem()
    await root.attach("/", open_passthrough(str(share), cache="none"), "PassthroughFs")
    path = str(tmp_path / "vhost.sock")
    listener = await daemon.listen_unix(path)
    nursery.start_soon(lambda: daemon.serve(listener, FuseServer(root), once=False))
    return path


@pytest.fixture(params=["io_uring", "no-io_uring"])
async def socket_path(
    tmp_path: Path,
    nursery: trio.Nursery,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    if request.param == "no-io_uring":  # as on a kernel or sandbox without io_uring
        monkeypatch.setattr(queuethread, "open_ring", lambda entries: None)
    return await serve_share(tmp_path, nursery)


@pytest.fixture
def kernel_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the reads submitted to io_uring (the real submission still happens)."""
    submitted: list[int] = []
    real = IoUring.submit_readv

    def counting(self: IoUring, fd: int, iovecs: int, count: int, offset: int,
                 user_data: int) -> None:  # fmt: skip
        submitted.append(offset)
        real(self, fd, iovecs, count, offset, user_data)

    monkeypatch.setattr(IoUring, "submit_readv", counting)
    return submitted


def start_reads(frontend: Frontend) -> tuple[FuseDriver, list[FuseCall]]:
    fuse = FuseDriver(frontend)
    fuse.init()
    f = fuse.lookup(ROOT_INO, b"big")
    fh = fuse.open(f.nodeid).fh
    calls = [fuse.read_call(f.nodeid, fh, k * READ, READ) for k in range(READS)]
    fuse.submit(*calls)
    return fuse, calls


def check(fuse: FuseDriver, calls: list[FuseCall]) -> None:
    for k, call in enumerate(calls):
        fuse.wait_for(call)
        assert fuse.reply(call).ok().payload == CONTENT[k * READ : (k + 1) * READ], k


async def test_many_large_reads_in_flight_come_back_exact(
    socket_path: str, kernel_reads: list[int], request: pytest.FixtureRequest
) -> None:
    def run() -> None:
        with Frontend.connect(socket_path, FrontendOptions(queue_size=1024)) as frontend:
            fuse, calls = start_reads(frontend)
            check(fuse, calls)

    await in_thread(run)
    if "no-io_uring" in request.node.callspec.id:
        assert kernel_reads == []
    else:
        assert kernel_reads, "no read was handed to the kernel"


async def test_stopping_the_queue_completes_the_reads_still_in_the_kernel(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_path = await serve_share(tmp_path, nursery)
    # Slow copies, made deterministic: the kernel's completions are held back (not lost)
    # until the daemon starts stopping the queue, so every read it handed to the kernel is
    # still in flight when GET_VRING_BASE arrives.
    stopping = threading.Event()
    handed = threading.Event()
    submitted: list[int] = []
    real_submit, real_ready, real_reap = IoUring.submit_readv, IoUring.ready, IoUring.reap
    real_stop = QueueThread.stop

    def submit(self: IoUring, fd: int, iovecs: int, count: int, offset: int,
               user_data: int) -> None:  # fmt: skip
        real_submit(self, fd, iovecs, count, offset, user_data)
        submitted.append(offset)
        if len(submitted) >= READS // 2:
            handed.set()

    async def stop(self: QueueThread) -> int:
        stopping.set()
        return await real_stop(self)

    monkeypatch.setattr(IoUring, "submit_readv", submit)
    monkeypatch.setattr(IoUring, "ready", lambda self: stopping.is_set() and real_ready(self))
    monkeypatch.setattr(IoUring, "reap", lambda self: real_reap(self) if stopping.is_set() else [])
    monkeypatch.setattr(QueueThread, "stop", stop)

    def run() -> int:
        with Frontend.connect(socket_path, FrontendOptions(queue_size=1024)) as frontend:
            fuse, calls = start_reads(frontend)
            assert handed.wait(DEADLINE), "the queue thread handed no reads to the kernel"
            bases = frontend.stop()
            taken = bases[1] - REQUESTS_BEFORE_READS
            check(fuse, calls[:taken])  # already in the used ring: no waiting on the daemon
            return taken

    taken = await in_thread(run)
    assert READS // 2 <= len(submitted) <= taken <= READS
