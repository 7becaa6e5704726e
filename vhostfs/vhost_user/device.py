"""What the vhost-user session needs from a device, and the per-queue state it hands over.

The session (session.py) owns the protocol: features, memory table, ring configuration and
the fds that come with them. The device owns what runs: one queue worker per started ring.
The session tells the device when a ring can run (`start_queue`) and when it must stop
(`stop_queue`, which answers with the index to resume from); in between the device reads the
current call fd from the `Vring` whenever it notifies, because the frontend may replace it at
any time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from vhostfs.virtio.memory import GuestMemory


@dataclass(slots=True)
class Vring:
    """Configuration of one virtqueue as set by the frontend. Owns its fds."""

    index: int
    num: int = 0  # queue size
    desc: int = 0  # frontend virtual addresses of the three areas
    avail: int = 0
    used: int = 0
    base: int = 0  # SET_VRING_BASE value (split: next avail index; packed: state word)
    kick: int | None = None  # eventfd the driver writes to
    call: int | None = None  # eventfd we write to for an interrupt
    err: int | None = None  # eventfd for ring errors
    enabled: bool = False
    started: bool = False  # has a kick fd (SET_VRING_KICK) since the last stop

    def replace_fd(self, name: str, fd: int | None) -> None:
        """Install a new kick/call/err fd and close the one it replaces."""
        old = getattr(self, name)
        setattr(self, name, fd)
        if old is not None and old != fd:
            os.close(old)

    def close(self) -> None:
        for name in ("kick", "call", "err"):
            self.replace_fd(name, None)


class Device(Protocol):
    """A virtio device behind a vhost-user session."""

    @property
    def virtio_features(self) -> int:
        """Virtio feature bits we offer (GET_FEATURES)."""
        ...

    @property
    def protocol_features(self) -> int:
        """vhost-user protocol feature bits we offer (GET_PROTOCOL_FEATURES)."""
        ...

    @property
    def max_queues(self) -> int:
        """Queues we can serve (GET_QUEUE_NUM); frontends may configure fewer."""
        ...

    def start_queue(self, vring: Vring, memory: GuestMemory, features: int) -> None:
        """Begin serving a started and enabled ring; its worker runs in the device's nursery.

        Raises VhostfsError (RejectedRequest, GuestMemoryError, ChainError) if the ring's
        addresses or size cannot be used; nothing is started then.
        """
        ...

    def interrupt(self, index: int) -> None:
        """Signal a running ring's current call fd (harmless if nothing is new)."""
        ...

    async def stop_queue(self, index: int) -> int | None:
        """Stop a running ring after its in-flight requests end; return its resume index.

        Returns None if the queue was not running. Cancellation: completes the stop.
        """
        ...

    async def stop_all(self) -> None:
        """Stop every ring (connection lost or device reset)."""
        ...
