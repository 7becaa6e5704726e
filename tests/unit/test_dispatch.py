"""The dispatch lock: trio's loop and a queue thread never run daemon code at once, and
neither starves the other."""

from __future__ import annotations

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
                lock.yield_to_trio()  # never releases unless trio is waiting
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
