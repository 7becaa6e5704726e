"""The dispatch lock: trio's loop and a queue thread never run daemon code at once, and
neither starves the other."""

from __future__ import annotations

import os
import threading
import time

import trio

from vhostfs.dispatch import current_dispatch_lock


async def test_a_busy_thread_and_trio_alternate_and_never_overlap() -> None:
    lock = current_dispatch_lock()
    assert current_dispatch_lock() is lock  # one per trio run
    inside: list[str] = []
    overlaps = 0
    thread_rounds = 0
    stop = threading.Event()
    started = threading.Event()
    gave_up = False  # the thread ran out of time: trio was starved

    def busy() -> None:
        nonlocal overlaps, thread_rounds, gave_up
        deadline = time.monotonic() + 20
        lock.acquire()
        try:
            started.set()
            while not stop.is_set():
                if time.monotonic() > deadline:
                    gave_up = True
                    break
                inside.append("thread")
                overlaps += len(inside) > 1
                sum(range(200))  # some work inside the critical section
                inside.pop()
                thread_rounds += 1
                lock.yield_turn()  # never releases unless someone is waiting
        finally:
            lock.release()

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        # Trio sleeps (and so lets go of the lock) until the thread holds it.
        await trio.to_thread.run_sync(started.wait)
        for _ in range(300):
            inside.append("trio")
            overlaps += len(inside) > 1
            inside.pop()
            await trio.lowlevel.checkpoint()  # one run-loop turn: an io wait each
    finally:
        stop.set()
        await trio.to_thread.run_sync(thread.join)
    assert not gave_up
    assert overlaps == 0
    assert thread_rounds >= 300  # the thread ran between trio's turns, too


async def test_trio_lets_go_of_the_lock_while_it_sleeps() -> None:
    lock = current_dispatch_lock()
    await trio.lowlevel.checkpoint()  # from here on trio's loop holds the lock
    done = threading.Event()

    def take() -> None:
        lock.acquire()
        lock.release()
        done.set()

    threading.Thread(target=take).start()
    await trio.to_thread.run_sync(done.wait)  # trio waits in epoll: the thread gets in
    assert done.is_set()


async def test_two_busy_threads_take_turns() -> None:
    """Two request queues kept full (a multi-queue guest) must not starve each other."""
    lock = current_dispatch_lock()
    inside: list[str] = []
    overlaps = 0
    rounds = {"a": 0, "b": 0}
    stop = threading.Event()
    gave_up: list[str] = []
    both_started = threading.Barrier(3)

    def busy(name: str) -> None:
        nonlocal overlaps
        deadline = time.monotonic() + 20
        both_started.wait()
        lock.acquire()
        try:
            while not stop.is_set() and min(rounds.values()) < 300:
                if time.monotonic() > deadline:
                    gave_up.append(name)
                    break
                inside.append(name)
                overlaps += len(inside) > 1
                os.stat(".")  # a request's syscall: lets the other thread have the GIL
                inside.pop()
                rounds[name] += 1
                lock.yield_turn()
        finally:
            lock.release()

    threads = [threading.Thread(target=busy, args=(name,)) for name in rounds]
    for thread in threads:
        thread.start()
    await trio.to_thread.run_sync(both_started.wait)
    try:
        # Trio sleeps from here on: only the threads' own hand-overs can share the lock.
        for thread in threads:  # each stops once both have run 300 requests
            await trio.to_thread.run_sync(thread.join)
    finally:
        stop.set()
    assert not gave_up  # neither thread was starved by the other
    assert overlaps == 0
