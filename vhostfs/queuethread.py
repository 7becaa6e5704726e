"""A request queue served by its own thread, blocking in poll(2) on the kick eventfd.

Why a thread: measured with a QEMU TCG guest doing one 4 KiB read at a time, a trio task
waiting on the kick fd (`wait_readable`, trio's epoll loop, a task switch) added ~40 us to
every round trip, while a thread blocked in poll() wakes straight into the ring (random
reads went from 0.71x to 0.80x of the C virtiofsd in hack/bench, docs/performance.md).
Only one thread runs Python at a time anyway (the GIL), so the thread buys latency; the
parallelism it gets is the kernel's, copying large reads on another core (iouring.py).

How it shares the daemon: the thread runs requests only while it holds the dispatch lock
(`dispatch.py`), which trio's loop holds whenever it runs. Every piece of state, the
filesystem's included, is therefore touched by one side at a time, exactly as in the
trio-only design.

Requests that may await (a blob fetch for a RAFS read, INIT, DESTROY: the request handler
says which, before starting one) cannot run in the thread, because trio's primitives need
trio's own thread. The thread hands those chains to a small pool of trio workers of this
runner, which complete them into the same ring under the same lock. Every other request is
driven inline by the thread. Its coroutine may yield one thing only: a `KernelRead`
(offload.py), a large read the thread may hand to its io_uring while it serves the requests
waiting behind it, resuming the coroutine when the kernel has copied the data. Anything else
it yields is a bug: the request fails with a zero-length reply and an error in the log.

When the ring runs empty the thread first polls it for a while, kicks left disabled, for as
long as the driver has lately been quick to send its next request (pollwindow.py), and
sleeps only after that.

Notifications are batched as in `virtiofs.QueueRunner`: the interrupt decision is taken when
the ring is empty or after a batch (ringservice.py). Stopping: the thread leaves at the next
request boundary (a wake eventfd interrupts its poll), requests handed to trio get
STOP_GRACE seconds, then they are cancelled.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

import trio

from vhostfs import offload
from vhostfs.dispatch import DispatchLock
from vhostfs.fdio import drain_eventfd, signal_eventfd
from vhostfs.iouring import IoUring, open_ring
from vhostfs.offload import KernelRead
from vhostfs.pollwindow import MAX_NS as MAX_POLL_NS
from vhostfs.pollwindow import PollWindow
from vhostfs.ringservice import Queue, RingService
from vhostfs.vhost_user.device import Vring
from vhostfs.virtio.chain import Chain

log = logging.getLogger(__name__)

# Submission slots of a queue thread's io_uring: more reads in flight than requests the
# driver keeps queued buys nothing (the guest's queue is 1024 deep, a Linux guest keeps a
# few dozen requests in flight).
KERNEL_READS_IN_FLIGHT: Final = 64
# How long the thread polls for kernel reads to finish before it sleeps. A 128 KiB read
# takes ~20 us in a kernel worker, and being woken from poll(2) by its completion cost more
# than that here (socket READ 128 KiB at 16 in flight: 29k/s sleeping, 37k/s polling).
READ_SPIN_NS: Final = 50_000


class QueueThread(RingService):
    """One running request queue: its serving thread plus a nursery for awaiting requests."""

    def __init__(
        self,
        vring: Vring,
        queue: Queue,
        serve: Callable[[Chain], Coroutine[Any, Any, int]],
        may_suspend: Callable[[Sequence[memoryview]], bool],  # of a request's readable part
        lock: DispatchLock,
        *,
        notify_batch: int,
        stop_grace: float,
        workers: int,
        kernel_reads: bool = True,
        poll_ns: int = MAX_POLL_NS,
    ) -> None:
        assert vring.kick is not None  # the session starts only rings with a kick fd
        super().__init__(vring, queue, notify_batch, workers)
        self._serve = serve
        self._may_suspend = may_suspend
        self._lock = lock
        self._kick = vring.kick
        self._stop_grace = stop_grace
        self._token = trio.lowlevel.current_trio_token()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(
            target=self._serve_forever, name=f"vhostfs-queue-{vring.index}", daemon=True
        )
        # Chains handed over and not started yet, and the trio workers that take them: a
        # worker is woken per hand-over (no task spawn per request, ~11 us each).
        self._handed: collections.deque[Chain] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._kernel_reads = kernel_reads
        # Reads the kernel is doing for us (offload.py): submission key -> the request's
        # coroutine and chain, resumed with the result. Only the thread touches these.
        self._ring: IoUring | None = None
        self._reads: dict[int, tuple[Coroutine[Any, Any, int], Chain]] = {}
        self._next_key = 0
        self._window = PollWindow(poll_ns)  # how long to poll the ring before sleeping

    # -- trio's side ------------------------------------------------------------------------

    def _started(self) -> None:
        if not self._stopping:
            self._thread.start()

    async def stop(self) -> int:
        """Stop the thread, let handed-over requests finish (bounded), return the base."""
        self._stopping = True
        signal_eventfd(self._wake)
        if self._thread.ident is not None:
            # While we wait, trio sleeps and so lets go of the dispatch lock: the thread
            # finishes its request, sees `_stopping` and leaves.
            await trio.to_thread.run_sync(self._thread.join)
        await self._wind_down(self._stop_grace)  # the chains handed over to trio workers
        os.close(self._wake)
        return self.queue.base()

    def _start_async(self, chain: Chain) -> None:
        """Called in trio (run_sync_soon) for a chain the thread must not serve itself."""
        self._handed.append(chain)
        self._lot.unpark(count=1)  # if every worker is busy, the first one done takes it

    async def _worker(self) -> None:
        while True:
            if not self._handed:
                await self._lot.park()
                continue
            chain = self._handed.popleft()
            try:
                written = await self._serve(chain)
            finally:
                self._in_flight -= 1
                if self._stopping and not self._in_flight:
                    self._drained.set()
            self._complete(chain, written)
            # The thread may be asleep on its kick fd and would not take the decision for us.
            self._notify()

    # -- the thread's side --------------------------------------------------------------------

    def _serve_forever(self) -> None:
        lock = self._lock
        poller = select.poll()
        poller.register(self._kick, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        if self._kernel_reads:
            self._ring = open_ring(KERNEL_READS_IN_FLIGHT)
        if self._ring is not None:
            offload.accept_kernel_reads()
            poller.register(self._ring.eventfd, select.POLLIN)
        lock.acquire()
        try:
            while not self._stopping:
                if self._reads and self._ring is not None and self._ring.ready():
                    self._finish_reads()
                chain = self._pop()
                if chain is not None:
                    self._handle(chain)
                    lock.yield_turn()
                    continue
                if self._unsignalled:
                    self._notify()
                idle_since = time.perf_counter_ns()
                if self._work_within(idle_since):
                    self._window.waited(time.perf_counter_ns() - idle_since)
                    continue
                if self._stopping or self.queue.enable_kicks():
                    self._window.waited(time.perf_counter_ns() - idle_since)
                    continue  # requests arrived while we were deciding to sleep
                lock.release()
                try:
                    poller.poll()
                finally:
                    lock.acquire()
                self._window.waited(time.perf_counter_ns() - idle_since)
                drain_eventfd(self._kick)
                if self._ring is not None:
                    drain_eventfd(self._ring.eventfd)
                self.queue.disable_kicks()
            self._finish_all_reads()
            if self._unsignalled:
                self._notify()
        except BaseException:
            # Not a request's failure (the handler turns those into replies): a bug here.
            # The guest stops getting answers on this queue, the daemon goes on.
            log.exception("queue %d: serving thread failed", self.vring.index)
            self._stopping = True
        finally:
            lock.release()
            if self._ring is not None:
                self._ring.close()

    def _handle(self, chain: Chain) -> None:
        if chain.error is None and self._may_suspend(chain.readable):
            self._in_flight += 1
            try:
                self._token.run_sync_soon(self._start_async, chain)
            except trio.RunFinishedError:
                self._in_flight -= 1  # the daemon is exiting: nobody will read a reply
            return
        self._drive(self._serve(chain), chain, None)

    def _drive(self, coro: Coroutine[Any, Any, int], chain: Chain, value: int | None) -> None:
        """Run a request's coroutine until it returns or waits for a kernel read.

        A coroutine may only yield a `KernelRead` here. It is submitted to the kernel when
        other requests wait in the ring (they are served during the copy) and there is room
        in flight; otherwise it is read right here and the coroutine goes on at once.
        """
        while True:
            try:
                request = coro.send(value)
            except StopIteration as done:
                self._complete(chain, int(done.value))
                return
            if not isinstance(request, KernelRead):
                coro.close()
                log.error(
                    "queue %d: request on chain %d tried to await in the queue thread",
                    self.vring.index,
                    chain.head,
                )
                self._complete(chain, 0)
                return
            ring = self._ring
            if ring is not None and len(self._reads) < ring.capacity and self.queue.pending():
                key = self._next_key = self._next_key + 1
                try:
                    _, address = request.bufs.iovec_array()
                    ring.submit_readv(request.fd, address, len(request.bufs), request.offset, key)
                except OSError as exc:
                    log.warning("queue %d: io_uring submission failed: %s", self.vring.index, exc)
                else:
                    # The coroutine's frame keeps `request` (its buffers, their iovec array
                    # and the mapping they point into) alive until we resume it.
                    self._reads[key] = (coro, chain)
                    if key == 1:
                        log.info("queue %d: large reads are copied by io_uring kernel workers "
                                 "while requests wait", self.vring.index)  # fmt: skip
                    return
            try:
                value = request.run()
            except OSError as exc:
                value = -exc.errno if exc.errno else -errno.EIO

    def _work_within(self, idle_since: int) -> bool:
        """Poll, kicks still disabled, for a request or a kernel read's completion.

        For the adaptive window (pollwindow.py), and while kernel reads are in flight for
        at least READ_SPIN_NS: they finish in microseconds, unlike a slow guest's next
        request, which the thread sleeps for. The dispatch lock is let go meanwhile, as in
        a sleep.
        """
        ring, queue = self._ring, self.queue
        reads = bool(self._reads)
        window = max(self._window.ns, READ_SPIN_NS) if reads else self._window.ns
        if not window:
            return False
        deadline = idle_since + window
        self._lock.release()
        try:
            while not self._stopping:
                if reads:
                    assert ring is not None
                    ring.collect()
                    if ring.ready():
                        return True
                if queue.pending():
                    return True
                if time.perf_counter_ns() >= deadline:
                    return False
                # Whoever else is runnable on this core goes first: on a small host that is
                # often the very thread that must deliver our interrupt (QEMU's event loop
                # under TCG), and polling over its head delays the next request instead.
                os.sched_yield()
            return True
        finally:
            self._lock.acquire()

    def _finish_reads(self) -> None:
        """Resume the requests whose kernel reads have completed."""
        assert self._ring is not None
        for key, result in self._ring.reap():
            waiting = self._reads.pop(key, None)
            if waiting is None:  # cannot happen: every key is submitted once, then popped
                log.error("queue %d: io_uring completion %d for no request", self.vring.index, key)
                continue
            self._drive(*waiting, result)

    def _finish_all_reads(self) -> None:
        """Before the thread leaves: wait for every read still in the kernel, complete it."""
        while self._reads:
            assert self._ring is not None
            self._ring.wait()
            self._finish_reads()
