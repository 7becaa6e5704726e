"""What every way of serving a virtqueue shares: popping, completing, batched interrupts.

A queue is served either by trio workers (`virtiofs.QueueRunner`) or by a queue thread
(`queuethread.QueueThread`); both pop chains the same way (a ring the driver broke stops
the service and is reported on the error fd), complete them the same way, take the
interrupt decision once per batch (virtiofs.py's module docstring), and run a pool of trio
workers that is wound down the same way when the queue stops.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import trio

from vhostfs.errors import ChainError
from vhostfs.fdio import signal_eventfd
from vhostfs.vhost_user.device import Vring
from vhostfs.virtio.chain import Chain

log = logging.getLogger(__name__)

# The most completions one interrupt may wait for, however deep the driver's queue.
NOTIFY_MAX: Final = 32


class Queue(Protocol):
    """The device side of a split or packed ring (virtio/ring.py, virtio/packed.py)."""

    def pending(self) -> bool: ...
    def backlog(self) -> int: ...
    def pop(self) -> Chain | None: ...
    def push(self, chain: Chain, written: int) -> None: ...
    def should_notify(self) -> bool: ...
    def enable_kicks(self) -> bool: ...
    def disable_kicks(self) -> None: ...
    def base(self) -> int: ...


class RingService:
    """Base of the queue servers: the shared pop/complete/notify steps, and the lifetime of
    their trio workers (`_worker`, run `workers` times by `run`)."""

    def __init__(self, vring: Vring, queue: Queue, notify_batch: int, workers: int) -> None:
        self.vring = vring
        self.queue = queue
        self._notify_batch = notify_batch
        self._workers = workers
        self._stopping = False
        self._unsignalled = 0  # completions pushed since the last interrupt decision
        self._in_flight = 0  # requests trio workers are serving (set `_drained` at zero)
        self._scope = trio.CancelScope()
        self._drained = trio.Event()
        self._finished = trio.Event()

    async def run(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    for _ in range(self._workers):
                        nursery.start_soon(self._worker)
                    self._started()
        finally:
            self._finished.set()

    async def _worker(self) -> None:
        raise NotImplementedError

    def _started(self) -> None:
        """Called once the workers are started (a queue thread starts its thread here)."""

    async def _wind_down(self, grace: float) -> None:
        """Give the requests in flight `grace` seconds, then cancel the workers and wait."""
        if self._in_flight:
            with trio.move_on_after(grace):
                await self._drained.wait()
            if self._in_flight:
                log.warning("queue %d: abandoning %d requests", self.vring.index, self._in_flight)
        self._scope.cancel()
        with trio.CancelScope(shield=True):
            await self._finished.wait()

    def _pop(self) -> Chain | None:
        try:
            return self.queue.pop()
        except ChainError as exc:
            # The driver broke the ring itself (not one chain): nothing after this point can
            # be trusted, so stop serving it and tell the frontend through the error fd.
            log.error("queue %d: ring is broken, no longer serving it: %s", self.vring.index, exc)
            self._stopping = True
            if self.vring.err is not None:
                signal_eventfd(self.vring.err)
            return None

    def _complete(self, chain: Chain, written: int) -> None:
        """Return a chain to the driver; interrupt when the ring is empty or a batch is full."""
        queue = self.queue
        queue.push(chain, written)
        self._unsignalled += 1
        done = self._unsignalled
        if not queue.pending() or done >= NOTIFY_MAX:
            self._notify()
        elif done >= self._notify_batch and done >= queue.backlog():
            # As many completed as still wait: a driver woken now refills the ring before we
            # run dry, and one wake-up covers half of what it keeps in flight.
            self._notify()

    def _notify(self) -> None:
        """Interrupt the driver for what was completed, if it asked to be told."""
        self._unsignalled = 0
        if self.queue.should_notify() and self.vring.call is not None:
            signal_eventfd(self.vring.call)
