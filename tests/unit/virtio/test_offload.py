"""offload.read_into: a plain preadv, except in a thread that takes kernel reads."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vhostfs import offload
from vhostfs.offload import OFFLOAD_MIN, KernelRead, read_into
from vhostfs.virtio.guestbufs import GuestBuffers
from vhostfs.virtio.memory import GuestMemory

T = TypeVar("T")
PAGE = 4096
DATA = bytes((i * 7 + 3) % 251 for i in range(512 << 10))


def pages(memory: GuestMemory, count: int) -> GuestBuffers:
    memory.view(0, 1)  # make the region the hot one
    mapped = memory.hot_mapping()
    assert mapped is not None
    gpas = [0x80000 - (k + 1) * PAGE for k in range(count)]  # scattered, descending
    return GuestBuffers(mapped.view[:], mapped.gpa, mapped.host, gpas, [PAGE] * count)


@pytest.fixture
def data_fd(tmp_path: Path) -> int:
    path = tmp_path / "data"
    path.write_bytes(DATA)
    return os.open(path, os.O_RDONLY)


def in_kernel_read_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a thread that declared it takes KernelReads (as a queue thread does)."""
    out: list[T] = []

    def body() -> None:
        offload.accept_kernel_reads()
        out.append(fn())

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert out, "the thread failed"
    return out[0]


def first_step(coro: Coroutine[Any, Any, int]) -> object:
    """What the coroutine yields first, or ("done", count) if it finishes at once."""
    try:
        return coro.send(None)
    except StopIteration as done:
        return ("done", done.value)


def test_elsewhere_a_large_read_is_a_plain_preadv(memory: GuestMemory, data_fd: int) -> None:
    bufs = pages(memory, OFFLOAD_MIN // PAGE)
    assert first_step(read_into(data_fd, bufs, 5)) == ("done", OFFLOAD_MIN)
    assert b"".join(bytes(v) for v in bufs) == DATA[5 : 5 + OFFLOAD_MIN]


def test_in_a_queue_thread_large_page_reads_are_yielded(
    memory: GuestMemory, data_fd: int
) -> None:
    def steps() -> list[object]:
        large = pages(memory, OFFLOAD_MIN // PAGE)
        small = pages(memory, OFFLOAD_MIN // PAGE - 1)
        views = list(large)  # not GuestBuffers: no iovec array to hand the kernel
        coros = [read_into(data_fd, b, 0) for b in (large, small, views)]
        return [first_step(c) for c in coros]

    yielded, small, views = in_kernel_read_thread(steps)
    assert isinstance(yielded, KernelRead)
    assert (yielded.fd, yielded.offset, yielded.bufs.nbytes) == (data_fd, 0, OFFLOAD_MIN)
    assert small == ("done", OFFLOAD_MIN - PAGE)
    assert views == ("done", OFFLOAD_MIN)


def resume(read: KernelRead, result: int) -> int:
    coro = read.__await__()
    assert next(coro) is read
    try:
        coro.send(result)
    except StopIteration as done:
        return int(done.value)
    raise AssertionError("a KernelRead yields once")


def test_the_kernels_result_is_the_count(memory: GuestMemory, data_fd: int) -> None:
    bufs = pages(memory, 32)
    assert resume(KernelRead(data_fd, bufs, 0), 32 * PAGE) == 32 * PAGE


def test_a_failed_kernel_read_raises_its_errno(memory: GuestMemory, data_fd: int) -> None:
    with pytest.raises(OSError) as err:
        resume(KernelRead(data_fd, pages(memory, 32), 0), -errno.EIO)
    assert err.value.errno == errno.EIO


def test_a_short_kernel_read_is_finished_like_preadv(memory: GuestMemory, data_fd: int) -> None:
    bufs = pages(memory, 32)
    for view in bufs:
        view[:] = b"\0" * PAGE
    read = KernelRead(data_fd, bufs, 1000)
    bufs[0][:] = DATA[1000 : 1000 + PAGE]  # what the kernel did copy: one page
    assert resume(read, PAGE) == 32 * PAGE
    assert b"".join(bytes(v) for v in bufs) == DATA[1000 : 1000 + 32 * PAGE]
    at_end = KernelRead(data_fd, bufs, len(DATA) - 3 * PAGE)
    assert resume(at_end, PAGE) == 3 * PAGE  # end of file: short, as preadv would be


def test_run_reads_in_place(memory: GuestMemory, data_fd: int) -> None:
    bufs = pages(memory, 20)
    assert KernelRead(data_fd, bufs, 77).run() == 20 * PAGE
    assert b"".join(bytes(v) for v in bufs) == DATA[77 : 77 + 20 * PAGE]
