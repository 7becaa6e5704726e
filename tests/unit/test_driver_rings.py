"""Cross-check: the test driver's rings against vhostfs's device-side rings, in one process.

The split driver is validated against a real peer (the C virtiofsd, in
tests/integration/test_frontend_driver.py); packed rings have no such peer in QEMU 7.2, so
here two independent implementations of the two sides (tests/support/driver_*.py and
vhostfs/virtio/{ring,packed}.py) must agree on ids, lengths, bytes, wrap-around and
notification decisions. A disagreement points at one of them; the message says which rule.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.support.driver_packed import PackedDriverRing
from tests.support.driver_ring import ChainSpec, SplitDriverRing
from tests.support.guest_memory import DriverMemory
from vhostfs.virtio.chain import Chain
from vhostfs.virtio.memory import GuestMemory
from vhostfs.virtio.packed import PackedQueue
from vhostfs.virtio.ring import SplitQueue

NUM = 8


@pytest.fixture
def memory() -> Iterator[tuple[DriverMemory, GuestMemory]]:
    driver = DriverMemory(4 << 20)
    device = GuestMemory()
    device.set_table(list(driver.regions), [driver.fd, driver.fd])
    yield driver, device
    device.clear()
    driver.close()


def device_for(
    ring: SplitDriverRing | PackedDriverRing, gm: GuestMemory
) -> SplitQueue | PackedQueue:
    if isinstance(ring, SplitDriverRing):
        return SplitQueue(
            gm,
            NUM,
            gm.view(ring.desc, 16 * NUM),
            gm.view(ring.avail, 6 + 2 * NUM),
            gm.view(ring.used, 6 + 8 * NUM),
            ring.vring_base(),
            ring.event_idx,
        )
    return PackedQueue(
        gm,
        NUM,
        gm.view(ring.ring, 16 * NUM),
        gm.view(ring.driver_event, 4),
        gm.view(ring.device_event, 4),
        ring.vring_base(),
        ring.event_idx,
    )


def echo(chain: Chain) -> int:
    """The fake device's work: copy the readable bytes, reversed, into the writable ones."""
    data = b"".join(bytes(v) for v in chain.readable)[::-1]
    written = 0
    for view in chain.writable:
        part = data[written : written + len(view)]
        view[: len(part)] = part
        written += len(part)
    return written


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
@pytest.mark.parametrize("event_idx", [False, True], ids=["no-event-idx", "event-idx"])
@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
def test_driver_and_device_agree(
    memory: tuple[DriverMemory, GuestMemory], packed: bool, event_idx: bool, indirect: bool
) -> None:
    mem, gm = memory
    cls = PackedDriverRing if packed else SplitDriverRing
    ring = cls(mem, NUM, event_idx=event_idx, indirect=indirect)
    device = device_for(ring, gm)
    rng = random.Random(7)
    in_flight: dict[int, tuple[bytes, int]] = {}  # id -> (payload, out gpa)
    for _round in range(300):  # the ring's slots wrap many times over
        for _ in range(rng.randint(1, 3)):
            payload = rng.randbytes(rng.randint(1, 32))  # fits one writable segment
            nseg = rng.randint(1, 2)
            if ring.free_descriptors < (1 if indirect else 1 + nseg) or len(in_flight) >= 3:
                break
            src = mem.alloc(len(payload))
            mem.write(src, payload)
            out = mem.alloc(64)
            segs = [(src, len(payload), False)] + [(out + 32 * i, 32, True) for i in range(nseg)]
            spec = ChainSpec(segs, mem.alloc(16 * len(segs), 16))
            in_flight[ring.add(spec)] = (payload, out)
        ring.kick_needed()
        popped: list[Chain] = []
        while (chain := device.pop()) is not None:
            assert chain.error is None, chain.error
            popped.append(chain)
        rng.shuffle(popped)  # complete out of order
        for chain in popped[: rng.randint(1, len(popped))] if popped else []:
            device.push(chain, echo(chain))
            device.should_notify()
        for ident, length in ring.poll_used():
            payload, out = in_flight.pop(ident)
            assert length == len(payload)
            assert mem.read(out, length) == payload[::-1]
        # Whatever the device did not complete this round it completes now.
        for chain in popped:
            if chain.head in in_flight:
                device.push(chain, echo(chain))
        for ident, length in ring.poll_used():
            payload, out = in_flight.pop(ident)
            assert mem.read(out, length) == payload[::-1]
    assert not in_flight


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_event_idx_interrupt_and_kick_decisions(
    memory: tuple[DriverMemory, GuestMemory], packed: bool
) -> None:
    mem, gm = memory
    cls = PackedDriverRing if packed else SplitDriverRing
    ring = cls(mem, NUM, event_idx=True, indirect=True)
    device = device_for(ring, gm)
    out = mem.alloc(64)
    chain = ChainSpec([(out, 16, True)])
    assert device.enable_kicks() is False  # device waits for the next avail entry
    ring.add(chain)
    assert ring.kick_needed() is True  # crossed avail_event
    popped = device.pop()
    assert popped is not None
    assert device.enable_kicks() is False
    assert ring.arm_interrupt() is False  # nothing used yet: wait for an interrupt
    device.push(popped, 0)
    assert device.should_notify() is True  # the driver asked for the next used entry
    assert ring.poll_used() != []
    ring.add(chain)
    assert ring.kick_needed() is True
