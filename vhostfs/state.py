"""The daemon's life cycle as nydusd models it: INIT -> READY -> RUNNING -> STOPPED.

reference/nydusd-interface.md section 6. The states and their JSON names and numbers are
nydusd's (`GET /api/v1/daemon` reports `state` by name). Transitions are a table held as
data; anything not in the table is an "unexpected event", which the HTTP API answers with
400 `...(DaemonAbnormal(UnexpectedEvent("<Event>")))`.

Rules the table encodes:

* A virtio-fs daemon walks INIT -(Mount)-> READY -(Start)-> RUNNING during start-up, before
  the API socket exists, so API clients first see RUNNING. RUNNING means the vhost-user
  socket is bound and listening; a VMM may or may not be connected.
* Shutdown (SIGTERM, SIGINT, `PUT /daemon/exit`) is RUNNING -(Stop)-> READY -(Stop)->
  STOPPED; STOPPED is terminal.
* Takeover (the FUSE hot-upgrade path) is only valid in INIT, and a virtio-fs daemon is never
  in INIT once the API runs, so `PUT /daemon/fuse/takeover` is always 400, as upstream.
* The VMM leaving does not change the state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final


class DaemonState(enum.IntEnum):
    """nydusd's DaemonState; the numbers are upstream's (RUNNING is 2, READY 3)."""

    INIT = 1
    RUNNING = 2
    READY = 3
    STOPPED = 4
    UNKNOWN = 5  # never produced; kept so the names cover upstream's enum


class DaemonEvent(enum.Enum):
    """Inputs of the state machine; `.value` is upstream's spelling in error messages."""

    MOUNT = "Mount"
    TAKEOVER = "Takeover"
    START = "Start"
    STOP = "Stop"
    EXIT = "Exit"


S, E = DaemonState, DaemonEvent

# (state, event) -> next state (section 6, "Transitions").
TRANSITIONS: Final[dict[tuple[DaemonState, DaemonEvent], DaemonState]] = {
    (S.INIT, E.MOUNT): S.READY,
    (S.INIT, E.TAKEOVER): S.READY,
    (S.INIT, E.STOP): S.STOPPED,
    (S.READY, E.START): S.RUNNING,
    (S.READY, E.STOP): S.STOPPED,
    (S.READY, E.EXIT): S.STOPPED,
    (S.RUNNING, E.STOP): S.READY,
}


class UnexpectedEvent(Exception):
    """`event` is not valid in the current state; carries upstream's rendering."""

    def __init__(self, event: DaemonEvent, state: DaemonState) -> None:
        super().__init__(f"event {event.value} is not valid in state {state.name}")
        self.event = event
        self.state = state

    @property
    def debug(self) -> str:
        """How nydusd's Rust Debug output spells this error."""
        return f'DaemonAbnormal(UnexpectedEvent("{self.event.value}"))'


Listener = Callable[[DaemonState, DaemonState], None]


class StateMachine:
    """The current state plus the table; `fire` is the only way to change it.

    Not thread-safe: it lives in the daemon's trio thread, like everything that fires it.
    """

    def __init__(self, state: DaemonState = DaemonState.INIT) -> None:
        self.state = state
        self._listeners: list[Listener] = []

    def on_change(self, listener: Listener) -> None:
        """Call `listener(old, new)` after every transition (logging, tests)."""
        self._listeners.append(listener)

    def can(self, event: DaemonEvent) -> bool:
        return (self.state, event) in TRANSITIONS

    def fire(self, event: DaemonEvent) -> DaemonState:
        """Apply `event`; raises UnexpectedEvent (state unchanged) if the table forbids it."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise UnexpectedEvent(event, self.state)
        old, self.state = self.state, new
        for listener in self._listeners:
            listener(old, new)
        return new

    def stop(self) -> None:
        """Drive the machine to STOPPED from wherever it is (shutdown path)."""
        while self.state is not DaemonState.STOPPED:
            self.fire(DaemonEvent.STOP)
