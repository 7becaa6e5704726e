"""A rate-limited warning log: a hostile guest or frontend must not be able to flood the log.

Used by every boundary that reports bad input (the FUSE server, the queue workers): at most
`burst` lines per `interval` seconds reach the logger, and the number dropped is reported
once the window ends.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs at most `burst` lines per `interval` seconds to `logger`; counts what it drops."""

    def __init__(self, logger: logging.Logger, burst: int = 10, interval: float = 1.0) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._window = -interval  # start of the current window (monotonic seconds)
        self._count = 0
        self.dropped = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= self.interval:
            if self.dropped:
                self.logger.warning("%d similar messages suppressed", self.dropped)
            self._window, self._count, self.dropped = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self.logger.warning(msg, *args)
        else:
            self.dropped += 1
