"""The virtio-fs device: per-queue workers that turn kicks into FUSE replies.

virtio 1.2 section 5.11; reference/vhost-user-virtiofs.md sections 8 and 12. Queue 0 is the
high-priority queue (FORGET, INTERRUPT), queues 1..N carry requests; all share one FUSE
session, so one `handle_request` serves every queue.

Who serves a queue. Request queues of an export whose requests run inline (a passthrough
share) are served by a queue thread (`queuethread.py`: a thread blocked in poll() wakes for
a kick far sooner than a trio task does), which hands the requests that may await to its
trio workers. The hiprio queue, the queues of an export that awaits (a RAFS image), and
every queue when the device is built with `threads=False` are served by trio workers
(`QueueRunner`, below).

Trio worker model. Each running queue has a small pool of worker tasks that all pop chains
straight from the ring (one thread, so pops never race). A worker handles each chain inline:
for most requests the filesystem never suspends, so a burst of requests is served by one
task with no scheduling at all. Only one worker waits on the kick eventfd (trio allows one
waiter per fd); the others are parked. When a worker starts a request while nobody waits for
kicks, it unparks one peer as *standby*: if the request suspends (a blob fetch), the standby
runs and keeps serving the ring; if it does not, the standby finds the ring empty and parks
again. That costs one task switch per burst rather than one task per request (a trio task
spawn costs about 11 us, more than a whole cached READ).

Notifications: once per batch of completions (ringservice.py) the ring decides whether the
driver wants an interrupt (EVENT_IDX or NO_INTERRUPT); the call fd is read from the Vring
each time because the frontend replaces it at will. Before waiting for a kick a worker
re-enables kicks and re-checks the ring, so a request that raced with the wait is never
stranded.

Stopping (GET_VRING_BASE, disable, reset): no new chains are popped, in-flight requests get
STOP_GRACE seconds to finish, then the queue's cancel scope is cancelled.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Final, Protocol, TypeVar, cast

import trio

from vhostfs.dispatch import current_dispatch_lock
from vhostfs.errors import ChainError, GuestMemoryError
from vhostfs.fdio import drain_eventfd, signal_eventfd
from vhostfs.pollwindow import MAX_NS as MAX_POLL_NS
from vhostfs.queuethread import QueueThread
from vhostfs.ratelog import RateLimitedLog
from vhostfs.ringservice import Queue, RingService
from vhostfs.vhost_user.device import Vring
from vhostfs.vhost_user.messages import ProtocolFeatures, VirtioFeatures
from vhostfs.virtio.buffers import ChainReader, ChainWriter
from vhostfs.virtio.chain import Chain
from vhostfs.virtio.memory import GuestMemory
from vhostfs.virtio.packed import PackedQueue
from vhostfs.virtio.ring import SplitQueue

log = logging.getLogger(__name__)
T = TypeVar("T")

# Queues we accept: hiprio plus up to 63 request queues. QEMU 7.2 ignores GET_QUEUE_NUM for
# vhost-user-fs and configures every queue its command line asks for, so be generous.
MAX_QUEUES: Final = 64
# Workers per queue: requests that may be suspended at once (like virtiofsd's thread pool).
DEFAULT_WORKERS: Final = 16
# Longest a queue thread polls its empty ring for the next request (pollwindow.py).
DEFAULT_POLL_US: Final = MAX_POLL_NS // 1000
# Seconds in-flight requests may take to finish when a queue stops.
STOP_GRACE: Final = 5.0
# The fewest completions an interrupt waits for while more requests are queued. Beyond it,
# RingService waits until as many are done as still wait (half of what the driver keeps in
# flight), at most NOTIFY_MAX: waking a sleeping driver costs ~15 us of our thread's time
# here (an IPI in a VM), so fewer wake-ups pay, as long as the driver refills the ring
# before we run dry. Measured at the socket with 16 in flight: a fixed batch of 4 gave 65k
# READs of 4 KiB/s, half the backlog (8) 83k, a batch of 16 59k (daemon and driver take
# turns).
NOTIFY_BATCH: Final = 4

OFFERED_FEATURES: Final = (
    VirtioFeatures.VERSION_1
    | VirtioFeatures.RING_INDIRECT_DESC
    | VirtioFeatures.RING_EVENT_IDX
    | VirtioFeatures.PROTOCOL_FEATURES
    | VirtioFeatures.RING_PACKED
)
OFFERED_PROTOCOL_FEATURES: Final = (
    ProtocolFeatures.MQ
    | ProtocolFeatures.REPLY_ACK
    | ProtocolFeatures.CONFIGURE_MEM_SLOTS
    | ProtocolFeatures.BACKEND_REQ
)


class RequestHandler(Protocol):
    """The FUSE server as the device sees it."""

    async def handle(self, reader: ChainReader, writer: ChainWriter) -> int:
        """Serve one request; return the bytes written into the reply (the used length)."""
        ...

    async def reset(self) -> None:
        """The frontend left: end the FUSE session as DESTROY would."""
        ...

    def serves_inline(self) -> bool:
        """Whether requests are expected to complete without awaiting (the export's root
        filesystem says so now): then request queues get queue threads."""
        ...

    def may_suspend(self, request: Sequence[memoryview]) -> bool:
        """Whether serving this request (its readable buffers) may await something.

        False lets a queue thread drive it inline; True sends it to a trio worker.
        """
        ...


class Runner(Protocol):
    """What the device keeps per running queue (trio workers or a queue thread)."""

    vring: Vring

    async def run(self) -> None: ...
    async def stop(self) -> int: ...


@types.coroutine
def run_inline(
    coro: Coroutine[Any, Any, T], on_suspend: Callable[[], None]
) -> Generator[Any, Any, T]:
    """`await coro` in the calling task, calling `on_suspend` if it ever really suspends.

    Most requests complete without yielding to the trio scheduler; only the first real
    suspension (a trap yielded to trio) tells the worker it must wake a standby. Every trap
    and every value or exception the scheduler sends back is passed through unchanged, so
    this is exactly `await coro` (cancellation included), plus the hook.
    """
    try:
        trap = coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    on_suspend()
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return cast(T, done.value)
        else:
            try:
                trap = coro.send(value)
            except StopIteration as done:
                return cast(T, done.value)


def open_queue(vring: Vring, memory: GuestMemory, features: int) -> Queue:
    """Build the device side of a ring from its configuration (validates every address)."""
    event_idx = bool(features & VirtioFeatures.RING_EVENT_IDX)
    num = vring.num
    if features & VirtioFeatures.RING_PACKED:
        return PackedQueue(
            memory,
            num,
            memory.uaddr_view(vring.desc, 16 * num),
            memory.uaddr_view(vring.avail, 4),
            memory.uaddr_view(vring.used, 4),
            vring.base,
            event_idx,
        )
    return SplitQueue(
        memory,
        num,
        memory.uaddr_view(vring.desc, 16 * num),
        memory.uaddr_view(vring.avail, 6 + 2 * num),
        memory.uaddr_view(vring.used, 6 + 8 * num),
        vring.base,
        event_idx,
    )


class QueueRunner(RingService):
    """The workers of one running queue (see the module docstring)."""

    def __init__(
        self,
        vring: Vring,
        queue: Queue,
        serve: Callable[[Chain], Coroutine[Any, Any, int]],
        workers: int,
    ) -> None:
        assert vring.kick is not None  # the session starts only rings with a kick fd
        super().__init__(vring, queue, NOTIFY_BATCH, workers)
        self._serve = serve
        self._kick = vring.kick
        self._lot = trio.lowlevel.ParkingLot()
        self._kick_waiter = False  # a worker is waiting on the kick fd
        self._standby = False  # a worker was unparked and has not run yet

    async def stop(self) -> int:
        """Stop popping, let in-flight requests finish (bounded), and return the base."""
        self._stopping = True
        self._lot.unpark_all()
        await self._wind_down(STOP_GRACE)
        return self.queue.base()

    async def _worker(self) -> None:
        while True:
            chain = None if self._stopping else self._pop()
            if chain is None:
                await self._idle()
                continue
            self._in_flight += 1
            try:
                written = await run_inline(self._serve(chain), self._ensure_standby)
            finally:
                self._in_flight -= 1
            self._complete(chain, written)
            if self._stopping and not self._in_flight:
                self._drained.set()

    def _ensure_standby(self) -> None:
        """A request is about to suspend: make sure someone goes on serving the ring."""
        if self._unsignalled:
            self._notify()  # completions must not wait for a request that may take long
        if not self._kick_waiter and not self._standby:
            self._standby = self._lot.unpark(count=1) != []

    async def _idle(self) -> None:
        if self._stopping or self._kick_waiter:
            await self._lot.park()
            self._standby = False
            return
        self._kick_waiter = True
        try:
            if self.queue.enable_kicks():
                return  # requests arrived while we were deciding to sleep
            await trio.lowlevel.wait_readable(self._kick)
            drain_eventfd(self._kick)
            self.queue.disable_kicks()
        finally:
            self._kick_waiter = False


class VirtioFsDevice:
    """The virtio-fs device behind a vhost-user session (implements session.Device)."""

    def __init__(
        self,
        handler: RequestHandler,
        nursery: trio.Nursery,
        workers: int = DEFAULT_WORKERS,
        packed: bool = True,
        threads: bool = True,
        poll_us: int = DEFAULT_POLL_US,
    ) -> None:
        self._handler = handler
        self._poll_ns = poll_us * 1000  # longest a queue thread polls its empty ring
        self._threads = threads  # request queues served by queue threads (queuethread.py)
        self._nursery = nursery
        self._workers = workers
        self._features = OFFERED_FEATURES
        if not packed:
            self._features &= ~VirtioFeatures.RING_PACKED
        self._runners: dict[int, Runner] = {}
        self._bad_chains = RateLimitedLog(log, burst=1)

    @property
    def virtio_features(self) -> int:
        return int(self._features)

    @property
    def protocol_features(self) -> int:
        return int(OFFERED_PROTOCOL_FEATURES)

    @property
    def max_queues(self) -> int:
        return MAX_QUEUES

    def start_queue(self, vring: Vring, memory: GuestMemory, features: int) -> None:
        if vring.kick is None:
            raise ChainError(f"queue {vring.index} has no kick fd")
        os.set_blocking(vring.kick, False)
        queue = open_queue(vring, memory, features)
        runner: Runner
        # A queue thread pays off only if most requests run inline in it: an export whose
        # requests await (a RAFS image: every read fetches or decompresses in a worker)
        # would pay two wake-ups per request, and measured ~15% slower reads that way.
        threaded = self._threads and self._handler.serves_inline()
        if vring.index == 0 or not threaded:
            # Hiprio carries only FORGET/INTERRUPT, rarely: one trio worker is enough.
            workers = 1 if vring.index == 0 else self._workers
            runner = QueueRunner(vring, queue, self._serve_chain, workers)
        else:
            runner = QueueThread(
                vring,
                queue,
                self._serve_chain,
                self._handler.may_suspend,
                current_dispatch_lock(),
                notify_batch=NOTIFY_BATCH,
                stop_grace=STOP_GRACE,
                workers=self._workers,
                poll_ns=self._poll_ns,
            )
        self._runners[vring.index] = runner
        self._nursery.start_soon(runner.run)
        log.debug("queue %d started: size %d, base %#x", vring.index, vring.num, vring.base)

    def interrupt(self, index: int) -> None:
        runner = self._runners.get(index)
        if runner is not None and runner.vring.call is not None:
            signal_eventfd(runner.vring.call)

    async def stop_queue(self, index: int) -> int | None:
        runner = self._runners.pop(index, None)
        if runner is None:
            return None
        base = await runner.stop()
        log.debug("queue %d stopped at %#x", index, base)
        return base

    async def stop_all(self) -> None:
        for index in sorted(self._runners):
            await self.stop_queue(index)

    async def _serve_chain(self, chain: Chain) -> int:
        if chain.error is not None:
            self._bad_chains.warning("malformed descriptor chain %d: %s", chain.head, chain.error)
            return 0
        reader = ChainReader(chain.readable)
        writer = ChainWriter(chain.writable)
        try:
            return await self._handler.handle(reader, writer)
        except (ChainError, GuestMemoryError) as exc:
            self._bad_chains.warning("request on chain %d failed: %s", chain.head, exc)
        except Exception:
            # The FUSE server is the errno boundary and should never get here; if it does,
            # one request is lost, not the daemon.
            log.exception("request on queue chain %d crashed its handler", chain.head)
        return 0
