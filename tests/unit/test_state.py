"""The daemon state machine: nydusd's table, and nothing else."""

from __future__ import annotations

import itertools

import pytest

from vhostfs.state import (
    TRANSITIONS,
    DaemonEvent,
    DaemonState,
    StateMachine,
    UnexpectedEvent,
)

S, E = DaemonState, DaemonEvent


def test_numbers_and_names_are_nydusds() -> None:
    assert [(s.name, s.value) for s in S] == [
        ("INIT", 1), ("RUNNING", 2), ("READY", 3), ("STOPPED", 4), ("UNKNOWN", 5)]


def test_virtiofs_life_cycle() -> None:
    seen: list[tuple[str, str]] = []
    machine = StateMachine()
    machine.on_change(lambda old, new: seen.append((old.name, new.name)))
    assert machine.fire(E.MOUNT) is S.READY
    assert machine.fire(E.START) is S.RUNNING
    machine.stop()
    assert machine.state is S.STOPPED
    assert seen == [("INIT", "READY"), ("READY", "RUNNING"), ("RUNNING", "READY"),
                    ("READY", "STOPPED")]


@pytest.mark.parametrize(("state", "event"), [
    (s, e) for s, e in itertools.product(S, E) if (s, e) not in TRANSITIONS])
def test_everything_outside_the_table_is_refused(state: DaemonState, event: DaemonEvent) -> None:
    machine = StateMachine(state)
    with pytest.raises(UnexpectedEvent) as info:
        machine.fire(event)
    assert machine.state is state
    assert info.value.debug == f'DaemonAbnormal(UnexpectedEvent("{event.value}"))'
    assert not machine.can(event)


def test_table_rows() -> None:
    assert TRANSITIONS[(S.INIT, E.TAKEOVER)] is S.READY
    assert TRANSITIONS[(S.READY, E.EXIT)] is S.STOPPED
    assert TRANSITIONS[(S.INIT, E.STOP)] is S.STOPPED
    assert len(TRANSITIONS) == 7


def test_stop_from_init_and_stopped() -> None:
    machine = StateMachine()
    machine.stop()
    assert machine.state is S.STOPPED
    machine.stop()  # already there: nothing to do
    assert machine.state is S.STOPPED
