"""Hostile descriptor chains sent through the whole daemon: each is returned with length 0,
nothing outside guest memory is touched, and the same ring keeps serving good requests.

The chains are placed by hand on a real ring (the test frontend's raw access) against the
in-process daemon; after every bad chain a LOOKUP on the same queue must still succeed.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.support.driver_ring import RawDesc, SplitDriverRing, write_table
from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseDriver
from tests.support.memoryfs import MemoryFilesystem
from vhostfs import daemon
from vhostfs.fuse.abi import InHeader, Opcode
from vhostfs.fuse.filesystem import ROOT_INO
from vhostfs.fuse.server import FuseServer
from vhostfs.virtio.chain import F_INDIRECT, F_NEXT, F_WRITE

QUEUE_SIZE = 64
OUTSIDE = 1 << 40  # far beyond the test frontend's guest memory


@pytest.fixture
async def socket_path(tmp_path: Path, nursery: trio.Nursery) -> str:
    fs = MemoryFilesystem()
    fs.add(ROOT_INO, b"file", stat.S_IFREG | 0o644, data=b"still here")
    path = str(tmp_path / "vhost.sock")
    listener = await daemon.listen_unix(path)
    nursery.start_soon(lambda: daemon.serve(listener, FuseServer(fs), once=False))
    return path


def getattr_request(frontend: Frontend) -> tuple[int, int]:
    """A readable GETATTR request in guest memory: (gpa, length)."""
    mem = frontend.mem
    gpa = mem.alloc(InHeader.SIZE + 16)
    InHeader(InHeader.SIZE + 16, Opcode.GETATTR, 7, ROOT_INO, 0, 0, 0, 0, 0).pack_into(mem.buf, gpa)
    return gpa, InHeader.SIZE + 16


Chains = Callable[[Frontend], dict[int, RawDesc]]


def loop(frontend: Frontend) -> dict[int, RawDesc]:
    gpa, length = getattr_request(frontend)
    return {0: RawDesc(gpa, length, F_NEXT, 1), 1: RawDesc(gpa, length, F_NEXT, 0)}


def longer_than_the_queue(frontend: Frontend) -> dict[int, RawDesc]:
    gpa, length = getattr_request(frontend)
    # every descriptor points to the next, the last back to the first: the walk must stop
    return {i: RawDesc(gpa, length, F_NEXT, (i + 1) % QUEUE_SIZE) for i in range(QUEUE_SIZE)}


def outside_memory(frontend: Frontend) -> dict[int, RawDesc]:
    gpa, length = getattr_request(frontend)
    return {0: RawDesc(gpa, length, F_NEXT, 1), 1: RawDesc(OUTSIDE, 4096, F_WRITE)}


def indirect_in_indirect(frontend: Frontend) -> dict[int, RawDesc]:
    mem = frontend.mem
    inner, outer = mem.alloc(16), mem.alloc(16)
    gpa, length = getattr_request(frontend)
    write_table(mem, inner, [RawDesc(gpa, length, 0)], packed=False)
    write_table(mem, outer, [RawDesc(inner, 16, F_INDIRECT)], packed=False)
    return {0: RawDesc(outer, 16, F_INDIRECT)}


def readable_after_writable(frontend: Frontend) -> dict[int, RawDesc]:
    gpa, length = getattr_request(frontend)
    out = frontend.mem.alloc(4096)
    return {0: RawDesc(out, 4096, F_WRITE | F_NEXT, 1), 1: RawDesc(gpa, length, 0)}


def header_lies(frontend: Frontend) -> dict[int, RawDesc]:
    mem = frontend.mem
    gpa = mem.alloc(InHeader.SIZE)
    InHeader(4096, Opcode.GETATTR, 9, ROOT_INO, 0, 0, 0, 0, 0).pack_into(mem.buf, gpa)
    out = mem.alloc(16)
    return {0: RawDesc(gpa, InHeader.SIZE, F_NEXT, 1), 1: RawDesc(out, 16, F_WRITE)}


@pytest.mark.parametrize(
    "make",
    [loop, longer_than_the_queue, outside_memory, indirect_in_indirect,
     readable_after_writable],
)  # fmt: skip
async def test_bad_chain_is_returned_empty_and_the_ring_goes_on(
    socket_path: str, make: Chains
) -> None:
    def run() -> tuple[list[tuple[int, int]], int]:
        options = FrontendOptions(queue_size=QUEUE_SIZE, indirect=False)
        with Frontend.connect(socket_path, options) as frontend:
            fuse = FuseDriver(frontend)
            fuse.init()
            queue = frontend.queue(1)
            ring = queue.ring
            assert isinstance(ring, SplitDriverRing)
            ring.post_raw(make(frontend), 0)
            queue.flush()
            used = queue.wait(frontend.deadline())
            return used, fuse.lookup(ROOT_INO, b"file").attr.size

    used, size = await trio.to_thread.run_sync(run)
    assert used == [(0, 0)]  # the bad chain came back, nothing written
    assert size == len(b"still here")  # and the same ring still serves requests


async def test_fuse_header_that_lies_gets_an_error_reply(socket_path: str) -> None:
    def run() -> tuple[list[tuple[int, int]], int]:
        options = FrontendOptions(queue_size=QUEUE_SIZE, indirect=False)
        with Frontend.connect(socket_path, options) as frontend:
            fuse = FuseDriver(frontend)
            fuse.init()
            queue = frontend.queue(1)
            ring = queue.ring
            assert isinstance(ring, SplitDriverRing)
            descs = header_lies(frontend)
            ring.post_raw(descs, 0)
            queue.flush()
            used = queue.wait(frontend.deadline())
            error = int.from_bytes(frontend.mem.buf[descs[1].addr + 4 : descs[1].addr + 8],
                                   "little", signed=True)  # fmt: skip
            assert fuse.lookup(ROOT_INO, b"file").attr.size == len(b"still here")
            return used, error

    used, error = await trio.to_thread.run_sync(run)
    assert used == [(0, 16)]
    assert error == -22  # EINVAL: in_header.len says 4096, 40 bytes were readable
