"""The polling window follows the driver: it grows for a quick one, drops to 0 for a slow one."""

from __future__ import annotations

import itertools

from vhostfs.pollwindow import GROW_START_NS, MAX_NS, PollWindow


def test_a_quick_driver_grows_the_window_until_polling_catches_it() -> None:
    window = PollWindow()
    assert window.ns == 0  # nothing is polled until a quick driver has been seen
    gap = 3 * GROW_START_NS  # the driver's next request comes this long after a reply
    sizes = []
    for _ in range(6):
        window.waited(gap)
        sizes.append(window.ns)
    assert sizes[:3] == [GROW_START_NS, 2 * GROW_START_NS, 4 * GROW_START_NS]
    assert sizes[2:] == [sizes[2]] * 4  # covered now: kept, not grown further
    assert sizes[2] >= gap


def test_the_window_never_exceeds_its_maximum() -> None:
    window = PollWindow()
    for _ in range(20):
        window.waited(MAX_NS)
    assert window.ns == MAX_NS


def test_late_requests_halve_the_window_down_to_nothing() -> None:
    window = PollWindow()
    for _ in range(20):
        window.waited(MAX_NS)
    sizes = []
    while window.ns:
        window.waited(MAX_NS + 1)  # one late request, or a driver that went idle
        sizes.append(window.ns)
    assert sizes[0] == MAX_NS // 2  # one late request does not undo a quick driver
    assert all(b == a // 2 for a, b in itertools.pairwise(sizes[:-1]))
    assert sizes[-1] == 0 and len(sizes) <= 5


def test_a_slow_driver_never_gets_polled_for() -> None:
    window = PollWindow()
    for _ in range(100):
        window.waited(2 * MAX_NS)  # e.g. a TCG guest's gap between a reply and a request
        assert window.ns == 0


def test_a_limit_of_zero_never_polls() -> None:
    window = PollWindow(0)  # vhostfs --poll-us 0
    for _ in range(10):
        window.waited(1_000)
        assert window.ns == 0


def test_a_lower_limit_caps_the_window() -> None:
    window = PollWindow(30_000)
    for _ in range(10):
        window.waited(25_000)
    assert window.ns == 30_000
    window.waited(31_000)  # beyond the limit: a slow request
    assert window.ns == 15_000
