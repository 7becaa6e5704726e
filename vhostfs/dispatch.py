"""The dispatch lock: trio's loop and the queue threads take turns running daemon code.

Request queues are served by plain threads (`queuethread.py`) because a thread blocked in
poll(2) wakes for a guest's kick several times faster than a trio task does. Everything
else (the vhost-user session, the hiprio queue, the HTTP API, requests that must await a
blob fetch) stays in trio. All of that code was written for trio's one-thread model, so it
must never run at the same time as a queue thread's request.

One `threading.Lock` gives exactly that. Trio holds it whenever its loop runs Python code
and lets go only while it sleeps in epoll (the `before_io_wait`/`after_io_wait` instrument
hooks); a queue thread holds it while it pops, serves and completes requests and lets go
while it sleeps on its kick fd. So between two awaits trio code still sees a world nobody
else touches, and a queue thread sees the same.

Fairness: a busy queue thread would otherwise re-take the lock before trio's blocked
acquire is scheduled, starving the session (a GET_VRING_BASE could wait for as long as the
guest keeps the ring full). When trio is waiting, the thread hands over at its next request
boundary via a condition variable and resumes once trio has run one loop iteration.

The lock is per trio run (a RunVar), created on first use, when the instrument is added.
"""

from __future__ import annotations

import threading

import trio


class DispatchLock(trio.abc.Instrument):
    """See the module docstring. Trio-side hooks are instrument methods."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._trio_waiting = False  # trio is blocked acquiring the lock
        self._trio_holds = False
        self._trio_turns = 0  # times trio took the lock: a waiting thread's turn marker

    # -- trio's side (instrument hooks, called by trio's run loop) ------------------------

    def after_io_wait(self, timeout: float) -> None:
        self._trio_waiting = True
        self._lock.acquire()
        self._trio_waiting = False
        self._trio_holds = True
        self._trio_turns += 1

    def before_io_wait(self, timeout: float) -> None:
        if self._trio_holds:
            self._trio_holds = False
            self._turn.notify_all()
            self._lock.release()

    def after_run(self) -> None:
        self.before_io_wait(0.0)

    # -- a queue thread's side -------------------------------------------------------------

    def acquire(self) -> None:
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    def yield_to_trio(self) -> None:
        """Between two requests: if trio is waiting for its turn, let it run first."""
        if self._trio_waiting:
            # wait() releases the lock and returns holding it again after a notify; trio
            # notifies each time it lets go. One trio turn is enough: then we go on even if
            # trio already wants the lock again, so the two strictly alternate.
            turn = self._trio_turns
            self._turn.wait_for(lambda: self._trio_turns != turn)


_CURRENT: trio.lowlevel.RunVar[DispatchLock] = trio.lowlevel.RunVar("vhostfs_dispatch")


def current_dispatch_lock() -> DispatchLock:
    """The dispatch lock of this trio run (installed on first use; call from trio)."""
    try:
        return _CURRENT.get()
    except LookupError:
        lock = DispatchLock()
        _CURRENT.set(lock)
        # From the next io wait on, trio's loop runs holding the lock. The code that runs
        # until then needs no lock: no queue thread can exist before this call returns.
        trio.lowlevel.add_instrument(lock)
        return lock
