"""The io_uring binding: vectored reads a kernel worker performs, reaped from the rings."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostfs import iouring
from vhostfs.iouring import IoUring, open_ring

DATA = bytes((i * 13 + 5) % 253 for i in range(256 << 10))
POLL_LIMIT_MS = 10_000  # a deadline for a wait that must end long before it


@pytest.fixture
def ring() -> Iterator[IoUring]:
    ring = open_ring(8)
    assert ring is not None, "io_uring must work on the machines this project runs on"
    yield ring
    ring.close()


@pytest.fixture
def data_fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "data"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    yield fd
    os.close(fd)


class Buffers:
    """An iovec array over ranges of one anonymous mapping (kept alive with it)."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.memory = mmap.mmap(-1, 1 << 20)
        self.memory[:] = b"\xee" * len(self.memory)
        self.ranges = ranges
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
        fields = [x for start, n in ranges for x in (base + start, n)]
        self.iovecs = struct.pack("@" + "PN" * len(ranges), *fields)
        self.address = ctypes.cast(ctypes.c_char_p(self.iovecs), ctypes.c_void_p).value or 0


def wait_for_results(ring: IoUring, count: int) -> dict[int, int]:
    results: dict[int, int] = {}
    while len(results) < count:
        ring.wait()
        results.update(ring.reap())
    return results


def test_readv_fills_exactly_the_ranges_in_order(ring: IoUring, data_fd: int) -> None:
    bufs = Buffers([(0x9000, 4096), (0x100, 300), (0x20003, 70000)])
    ring.submit_readv(data_fd, bufs.address, len(bufs.ranges), 11, user_data=42)
    assert wait_for_results(ring, 1) == {42: 4096 + 300 + 70000}
    expected = bytearray(b"\xee" * len(bufs.memory))
    pos = 11
    for start, n in bufs.ranges:
        expected[start : start + n] = DATA[pos : pos + n]
        pos += n
    assert bufs.memory[:] == bytes(expected)  # nothing outside the ranges was written
    assert not ring.ready()


def test_errors_and_end_of_file_come_back_as_results(ring: IoUring, data_fd: int) -> None:
    bufs = Buffers([(0, 8192)])
    ring.submit_readv(-1, bufs.address, 1, 0, user_data=1)
    ring.submit_readv(data_fd, bufs.address, 1, len(DATA) - 100, user_data=2)
    ring.submit_readv(data_fd, bufs.address, 1, len(DATA), user_data=3)
    assert wait_for_results(ring, 3) == {1: -errno.EBADF, 2: 100, 3: 0}


def test_a_completion_wakes_a_thread_sleeping_in_poll(ring: IoUring, data_fd: int) -> None:
    # The queue thread sleeps in poll(2) on the ring's eventfd while reads are in flight.
    bufs = Buffers([(0, 128 << 10)])
    ring.submit_readv(data_fd, bufs.address, 1, 0, user_data=7)
    poller = select.poll()
    poller.register(ring.eventfd, select.POLLIN)
    assert poller.poll(POLL_LIMIT_MS) == [(ring.eventfd, select.POLLIN)]
    ring.collect()
    assert ring.ready()
    assert ring.reap() == [(7, 128 << 10)]
    assert bufs.memory[: 128 << 10] == DATA[: 128 << 10]


def test_every_slot_can_be_in_flight_and_reused(ring: IoUring, data_fd: int) -> None:
    bufs = [Buffers([(0, 4096 + k)]) for k in range(ring.capacity)]
    for rounds in range(3):
        for k, buf in enumerate(bufs):
            ring.submit_readv(data_fd, buf.address, 1, k + rounds, user_data=k)
        assert wait_for_results(ring, ring.capacity) == {k: 4096 + k for k in range(ring.capacity)}
        for k, buf in enumerate(bufs):
            assert buf.memory[: 4096 + k] == DATA[k + rounds : k + rounds + 4096 + k]


def test_close_releases_the_ring_and_its_eventfd() -> None:
    ring = open_ring(4)
    assert ring is not None
    fd, efd = ring.fd, ring.eventfd
    ring.close()
    for closed in (fd, efd):
        with pytest.raises(OSError) as err:
            os.fstat(closed)
        assert err.value.errno == errno.EBADF
    ring.close()  # twice is harmless


def test_a_submission_the_kernel_refused_is_taken_back(
    ring: IoUring, data_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = iouring._syscall

    def refusing(number: int, *args: object) -> int:
        if number == iouring._SYS_IO_URING_ENTER:
            ctypes.set_errno(errno.ENOMEM)
            return -1
        return int(real(number, *args))

    bufs = Buffers([(0, 4096)])
    monkeypatch.setattr(iouring, "_syscall", refusing)
    with pytest.raises(OSError) as err:
        ring.submit_readv(data_fd, bufs.address, 1, 0, user_data=1)
    assert err.value.errno == errno.ENOMEM
    monkeypatch.setattr(iouring, "_syscall", real)
    ring.submit_readv(data_fd, bufs.address, 1, 0, user_data=2)
    poller = select.poll()
    poller.register(ring.eventfd, select.POLLIN)
    assert poller.poll(POLL_LIMIT_MS)
    ring.collect()
    assert ring.reap() == [(2, 4096)]  # the refused one never ran, nor took its place
