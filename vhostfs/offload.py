"""Large reads into guest memory that the kernel may finish off the serving thread.

A filesystem fills a READ reply with `await read_into(fd, bufs, offset)`. In a queue thread
that owns an io_uring (queuethread.py, iouring.py), a large read into guest pages becomes a
`KernelRead` that the request's coroutine yields to the thread. The thread decides: when
other requests wait in the ring, it submits the read to a kernel worker, serves them while
the copy runs on another core, and resumes the coroutine with the count once the kernel
posts it; when nothing else waits, it reads at once (a hand-off would only add latency).
Everywhere else (trio workers, tests, a kernel without io_uring, small reads) `read_into` is
a plain preadv and never yields.

The measured reason (docs/performance.md): of a 128 KiB READ at the socket, about 60% was
the kernel's copy on our one serving thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from typing import Final

from vhostfs.virtio.guestbufs import IOV_MAX, GuestBuffers, preadv_into

# Below this the copy (~1 us per 16 KiB here) costs less than handing it off and back.
OFFLOAD_MIN: Final = 64 << 10

_this_thread = threading.local()


def accept_kernel_reads() -> None:
    """Declare that the calling thread's request runner takes `KernelRead`s (see module doc)."""
    _this_thread.accepts = True


class KernelRead:
    """A pending preadv(fd, bufs, offset): what `read_into` yields to a queue thread.

    The runner either submits it (`fd`, the iovec array of `bufs`, `offset`) and later sends
    the kernel's result (bytes read or -errno) into the coroutine, or calls `run` and sends
    that. Either way the coroutine gets the count, short only at end of file.
    """

    __slots__ = ("bufs", "fd", "offset")

    def __init__(self, fd: int, bufs: GuestBuffers, offset: int) -> None:
        self.fd = fd
        self.bufs = bufs
        self.offset = offset

    def run(self) -> int:
        """Do the read here and now."""
        return self.bufs.preadv(self.fd, self.offset)

    def __await__(self) -> Generator[KernelRead, int, int]:
        result = yield self
        if result < 0:
            raise OSError(-result, os.strerror(-result))
        wanted = self.bufs.nbytes
        if 0 < result < wanted:
            # End of file, or a read the kernel cut short: finish as preadv_into would.
            rest = self.bufs.span(result, wanted - result)
            result += rest.preadv(self.fd, self.offset + result)
        return result


async def read_into(fd: int, bufs: Sequence[memoryview], offset: int) -> int:
    """Fill `bufs` in order from `fd` at `offset`; the count is short only at end of file."""
    if (
        type(bufs) is GuestBuffers
        and getattr(_this_thread, "accepts", False)
        and len(bufs) <= IOV_MAX
        and bufs.nbytes >= OFFLOAD_MIN
    ):
        return await KernelRead(fd, bufs, offset)
    return preadv_into(fd, bufs, offset)
