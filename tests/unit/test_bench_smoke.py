"""hack/bench's pure parts: guest output parsing, round order, profile folding, CPU sampling.

No daemon, guest or timing is involved (timings are never asserted); the benchmark itself is
run by hand (`hack/bench --quick`).
"""

from __future__ import annotations

import os

import pytest

from hack import bench, bench_guest, bench_profile
from hack.bench_daemons import tree_cpu

SIZES = bench_guest.GuestSizes(big_file=4 << 20, rand_reads=10, small_files=100)
OUTPUT = """\
T seq0a 10.0
T seq0b 10.7
DD 4+0 records in
DD 4+0 records out
T seq1a 10.7
T seq1b 11.2
DD 4+0 records in
DD 4+0 records out
T seq2a 11.2
T seq2b 11.8
DD 4+0 records in
DD 4+0 records out
reads=10 bytes=40960 seconds=0.250000000
T walk0 11.0
N 151
T walk1 12.0
T walk2 14.0
T walk3 15.5
"""


def test_guest_output_becomes_rates() -> None:
    run = bench_guest.parse(OUTPUT, "c", SIZES, cpu=1.5, rss=2048, boot=20.0)
    assert run.seq_bytes == 4 << 20
    assert run.seq_mbps == pytest.approx((4 << 20) / 1e6 / 0.5)  # the fastest pass
    assert run.rand_iops == pytest.approx(40.0)
    assert run.walk_seconds == pytest.approx(4.5)
    assert run.walk_entries_per_s == pytest.approx(151 / 4.5)


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("DD 4+0 records in\nDD 4+0 records out\nT seq2a", "DD 3+1 records in\nT seq2a"),
        ("N 151", "N 150"),
        ("T walk3 15.5", ""),
        ("T seq2b 11.8", ""),
    ],
    ids=["short-read", "missing-entries", "missing-mark", "missing-pass-mark"],
)
def test_guest_output_that_came_up_short_is_refused(good: str, bad: str) -> None:
    with pytest.raises(ValueError, match="guest"):
        bench_guest.parse(OUTPUT.replace(good, bad), "c", SIZES, cpu=0, rss=0, boot=0)


def test_every_daemon_goes_first_once() -> None:
    firsts = [bench.rotated(bench.GUEST_SPECS, r)[0] for r in range(len(bench.GUEST_SPECS))]
    assert sorted(s.key for s in firsts) == sorted(s.key for s in bench.GUEST_SPECS)


def test_profile_costs_scale_samples_to_cpu_per_request() -> None:
    collapsed = (
        "run (trio/_run.py:1);handle (vhostfs/fuse/server.py:10);pread (x/passthrough.py:5) 3\n"
        "run (trio/_run.py:1);handle (vhostfs/fuse/server.py:10) 1\n"
    )
    lines = bench_profile.top_costs(collapsed, cpu_per_request_us=40.0)
    assert lines[1].split() == ["30.00", "30.00", "passthrough.py:pread"]
    assert lines[2].split() == ["10.00", "40.00", "server.py:handle"]


def test_tree_cpu_sees_this_process() -> None:
    sum(range(2_000_000))  # burn a few clock ticks
    assert tree_cpu(os.getpid()) > 0
