"""When a queue interrupts the driver (RingService._complete): once per half of the backlog.

A split ring on guest memory, served one chain at a time as a queue thread does, with a
driver that refills the ring by as many chains as each interrupt told it were done.
"""

from __future__ import annotations

import os
import struct

from tests.unit.virtio.test_split_ring import AVAIL, DATA, DESC, USED, put_desc
from vhostfs.ringservice import NOTIFY_MAX, RingService
from vhostfs.vhost_user.device import Vring
from vhostfs.virtio.memory import GuestMemory
from vhostfs.virtio.ring import SplitQueue

SIZE = 256


def serve(memory: GuestMemory, in_flight: int, completions: int) -> list[int]:
    """Keep `in_flight` requests queued; returns how many completions each interrupt told."""
    queue = SplitQueue(memory, SIZE, memory.view(DESC, 16 * SIZE),
                       memory.view(AVAIL, 6 + 2 * SIZE), memory.view(USED, 6 + 8 * SIZE),
                       0, False)  # fmt: skip
    for slot in range(SIZE):
        put_desc(memory, DESC, slot, DATA + 64 * slot, 64, 2, 0)  # one writable buffer each
    vring = Vring(1, call=os.eventfd(0, os.EFD_NONBLOCK))
    service = RingService(vring, queue, notify_batch=4, workers=0)
    published = 0

    def refill(count: int) -> None:
        nonlocal published
        avail = memory.view(AVAIL, 6 + 2 * SIZE)
        for k in range(published, published + count):
            struct.pack_into("<H", avail, 4 + 2 * (k % SIZE), k % SIZE)
        published += count
        struct.pack_into("<H", avail, 2, published & 0xFFFF)

    refill(in_flight)
    told: list[int] = []
    done = 0
    since = 0
    while done < completions:
        chain = queue.pop()
        assert chain is not None
        service._complete(chain, 0)
        done += 1
        since += 1
        try:
            os.eventfd_read(vring.call)
        except BlockingIOError:
            continue
        told.append(since)
        refill(min(since, completions - published))
        since = 0
    vring.close()
    return told


def test_a_deep_queue_is_told_once_per_half_of_what_it_keeps_in_flight(
    memory: GuestMemory,
) -> None:
    told = serve(memory, in_flight=16, completions=160)
    assert told[:-2] == [8] * len(told[:-2])  # the tail: the driver stopped refilling


def test_a_shallow_queue_is_told_when_its_ring_runs_empty(memory: GuestMemory) -> None:
    assert serve(memory, in_flight=1, completions=5) == [1] * 5
    assert serve(memory, in_flight=4, completions=8) == [4, 4]


def test_no_interrupt_waits_for_more_than_notify_max(memory: GuestMemory) -> None:
    told = serve(memory, in_flight=200, completions=200)
    assert max(told) == NOTIFY_MAX and sum(told) == 200
