"""The dispatch lock: trio's loop and the queue threads take turns running daemon code.

Request queues of an export whose requests run inline are served by plain threads
(`queuethread.py`) because a thread blocked in poll(2) wakes for a guest's kick several
times faster than a trio task does. Everything else (the vhost-user session, the hiprio
queue, the HTTP API, requests that must await a blob fetch) stays in trio. All of that
code was written for trio's one-thread model, so it must never run at the same time as a
queue thread's request.

One `threading.Lock` gives exactly that. Trio holds it whenever its loop runs Python code
and lets go only while it sleeps in epoll (the `before_io_wait`/`after_io_wait` instrument
hooks); a queue thread holds it while it pops, serves and completes requests and lets go
while it sleeps on its kick fd. So between two awaits trio code still sees a world nobody
else touches, and a queue thread sees the same.

Fairness: a busy holder would otherwise re-take the lock before a blocked acquirer is
scheduled, starving the session (a GET_VRING_BASE could wait for as long as the guest keeps
the ring full) or another request queue's thread. Whoever waits for the lock registers in
`_waiting`; a thread checks it between two requests and, if anyone waits, hands over through
a condition variable and resumes once somebody else has taken a turn. Every release
notifies, so a thread that handed over is woken whoever holds the lock next.

The lock is per trio run (a RunVar), created on first use, when the instrument is added.
"""

from __future__ import annotations

import threading
from typing import Final

import trio


class DispatchLock(trio.abc.Instrument):
    """See the module docstring. Trio-side hooks are instrument methods."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        # Parties blocked on the lock or handing over: trio, or a thread's ident. A set,
        # because its add/discard are atomic under the GIL (a counter's += is not).
        self._waiting: set[object] = set()
        self._turns = 0  # times anyone took the lock (changed only by its holder)
        self._trio_holds = False

    # -- trio's side (instrument hooks, called by trio's run loop) ------------------------

    def after_io_wait(self, timeout: float) -> None:
        self._take(_TRIO)
        self._trio_holds = True

    def before_io_wait(self, timeout: float) -> None:
        if self._trio_holds:
            self._trio_holds = False
            self.release()

    def after_run(self) -> None:
        self.before_io_wait(0.0)

    # -- a queue thread's side -------------------------------------------------------------

    def acquire(self) -> None:
        self._take(threading.get_ident())

    def release(self) -> None:
        self._turn.notify_all()  # a party that handed over waits on the condition
        self._lock.release()

    def yield_turn(self) -> None:
        """Between two requests: if anybody waits for the lock, let them have a turn."""
        if self._waiting:
            me = threading.get_ident()
            turn = self._turns
            self._waiting.add(me)
            try:
                self._turn.notify_all()  # another thread may be handing over, too
                # wait() releases the lock and returns holding it again after a notify. One
                # turn by someone else is enough: then we go on, so busy parties alternate.
                self._turn.wait_for(lambda: self._turns != turn)
            finally:
                self._waiting.discard(me)
            self._turns += 1

    def _take(self, party: object) -> None:
        self._waiting.add(party)
        self._lock.acquire()
        self._waiting.discard(party)
        self._turns += 1


_TRIO: Final = "trio"  # trio's entry in `_waiting` (threads use their idents)


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
