"""How long a queue thread polls its ring before it sleeps, adapted as KVM adapts halt polling.

Why: waking a thread that sleeps in poll(2) costs a round trip tens of microseconds here (an
eventfd write, an IPI, a scheduler wake-up), and a driver that keeps one request in flight
pays it on every request. While the thread polls, it also leaves kicks disabled, so the
driver does not even write the kick (a guest saves a VM exit). Measured at the socket with
one request in flight: READ 128 KiB 7.2k -> 13.4k requests/s, LOOKUP+GETATTR 9.9k -> 18.4k/s
(the C virtiofsd: 10.9k and 12.8k); docs/performance.md.

Polling only pays when the next request comes within the window, so the window follows the
driver (KVM's halt_poll_ns rules): a wait the window covered keeps it; a short wait it did
not cover grows it (from GROW_START_NS, doubling, at most MAX_NS); a wait longer than MAX_NS
halves it (below GROW_START_NS: zero). A driver slower than MAX_NS keeps the window at zero:
the thread sleeps at once, as without polling, and costs no CPU. While polling, the thread
yields its core between looks (queuethread.py says why). MAX_NS is KVM's default
halt-polling limit halved: with 50 us, one wait in ten at the socket (the driver's 20-25 us
round trip has a tail) fell outside and READ 128 KiB at one in flight got 10.5k/s, not 14k/s.

Pure bookkeeping; the thread measures its waits (queuethread.py).
"""

from __future__ import annotations

from typing import Final

MAX_NS: Final = 100_000  # the default limit (vhostfs --poll-us)
GROW_START_NS: Final = 10_000


class PollWindow:
    """The current polling window in nanoseconds (0: sleep at once), at most `max_ns`."""

    __slots__ = ("_max", "ns")

    def __init__(self, max_ns: int = MAX_NS) -> None:
        self.ns = 0
        self._max = max_ns

    def waited(self, ns: int) -> None:
        """Work came `ns` nanoseconds after the ring ran empty (by polling or a wake-up)."""
        if ns <= self.ns:
            return  # polling caught it
        if ns > self._max:
            # A slow driver (or an idle one): polling would only burn the core. Halved,
            # not dropped, so one late request does not undo a quick driver's window.
            self.ns = half if (half := self.ns // 2) >= GROW_START_NS else 0
        else:
            self.ns = min(self._max, max(GROW_START_NS, 2 * self.ns))
