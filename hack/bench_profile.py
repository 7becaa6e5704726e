"""Profile our daemon under the socket workloads with py-spy; the top costs per request.

    .venv/bin/python -m hack.bench_profile [--seconds 5] [--in-flight 1] [--out DIR]

Needs py-spy in the venv (``.venv/bin/pip install py-spy``). For each workload a fresh
``vhostfs --cache none`` serves a tree, py-spy samples it (``--nonblocking``, so the daemon
is never paused; idle samples are dropped, so the profile is where CPU goes), and this
process drives it with the test frontend (a separate process from the daemon, as in
hack/bench). Each function's share of the samples is scaled by the daemon's measured CPU
per request, giving microseconds of CPU per request: "self" counts samples in the function
itself, "total" also those in what it calls. Collapsed stacks are kept in DIR for flame
graphs (flamegraph.pl, speedscope).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from hack.bench_daemons import OURS, Daemon, tree_cpu
from hack.bench_socket import DIRECTORY, FILE, make_tree
from tests.support import throughput
from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseDriver
from vhostfs.fuse import abi

PY_SPY: Final = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
RATE: Final = 1000  # samples per second
TOP: Final = 14  # rows per table

Workload = Callable[[FuseDriver, float, int], throughput.Throughput]


def _read(size: int) -> Workload:
    def run(fuse: FuseDriver, seconds: float, k: int) -> throughput.Throughput:
        entry = fuse.lookup(abi.ROOT_ID, FILE)
        fh = fuse.open(entry.nodeid).fh
        return throughput.bench_read(fuse, entry.nodeid, fh, entry.attr.size, size, k, seconds)

    return run


def _lookup_getattr(fuse: FuseDriver, seconds: float, k: int) -> throughput.Throughput:
    return throughput.bench_lookup_getattr(fuse, abi.ROOT_ID, FILE, k, duration=seconds)


def _readdirplus(fuse: FuseDriver, seconds: float, k: int) -> throughput.Throughput:
    dir_id = fuse.lookup(abi.ROOT_ID, DIRECTORY).nodeid
    return throughput.bench_readdirplus(fuse, dir_id, k, duration=seconds)


WORKLOADS: Final[dict[str, Workload]] = {
    "READ 128 KiB": _read(128 << 10),
    "READ 4 KiB": _read(4 << 10),
    "LOOKUP+GETATTR": _lookup_getattr,
    "READDIRPLUS 4 KiB": _readdirplus,
}


def frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``module.py:func``: short, still greppable."""
    func, _, where = frame.partition(" (")
    return f"{Path(where.split(':')[0]).name}:{func}" if where else func


def top_costs(collapsed: str, cpu_per_request_us: float) -> list[str]:
    """Self and inclusive µs of CPU per request for the hottest functions."""
    self_count: collections.Counter[str] = collections.Counter()
    total_count: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        samples += n
        self_count[frames[-1]] += n
        for name in set(frames):  # a recursive function counts once per sample
            total_count[name] += n
    if not samples:
        return ["  (no samples)"]
    scale = cpu_per_request_us / samples
    lines = [f"  {'self µs/req':>11} {'total µs/req':>12}  function"]
    for name, n in self_count.most_common(TOP):
        lines.append(f"  {n * scale:>11.2f} {total_count[name] * scale:>12.2f}  {name}")
    lines.append(f"  -- inclusive (top {TOP}, excluding trio's run loop and the entry point) --")
    skip = ("<module>", "_run_module_as_main", "_run_code", "run (_run.py", "main")
    shown = 0
    for name, n in total_count.most_common():
        if shown == TOP:
            break
        if any(s in name for s in skip) or name.startswith(("_run.py:", "runpy")):
            continue
        lines.append(f"  {'':>11} {n * scale:>12.2f}  {name}")
        shown += 1
    return lines


def profile(name: str, seconds: float, k: int, out: Path, shared: Path) -> list[str]:
    """One workload against a fresh daemon under py-spy; the report lines."""
    sock = out / "profile.sock"
    daemon = Daemon(OURS, sock, shared, out / "profile.log")
    raw = out / f"{name.replace(' ', '_').replace('+', '_')}-K{k}.collapsed"
    spy = subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "--pid",
            str(daemon.pid),
            "--rate",
            str(RATE),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        options = FrontendOptions(queue_size=1024, memory_size=256 << 20)
        with Frontend.connect(str(sock), options) as frontend:
            fuse = FuseDriver(frontend)
            fuse.init()
            # py-spy needs a moment to attach; warm up the daemon meanwhile
            WORKLOADS[name](fuse, 0.5, k)
            cpu0, start = tree_cpu(daemon.pid), time.monotonic()
            result = WORKLOADS[name](fuse, seconds, k)
            cpu = tree_cpu(daemon.pid) - cpu0
    finally:
        daemon.finish()
        _, err = spy.communicate(timeout=60)  # py-spy writes its file when the target exits
    per_request = cpu / result.requests * 1e6
    head = (
        f"{name}, K={k}: {result.rps:.0f} req/s over {time.monotonic() - start:.1f} s, "
        f"daemon CPU {per_request:.1f} µs/request"
    )
    if not raw.exists():
        return [head, f"  py-spy wrote nothing: {err.decode(errors='replace')}"]
    return [head, *top_costs(raw.read_text(), per_request)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per workload")
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--out", type=Path, help="keep collapsed stacks here")
    # no choices=: Python 3.11's argparse checks an empty nargs="*" list against them
    parser.add_argument("workloads", nargs="*", help=f"default: all of {list(WORKLOADS)}")
    args = parser.parse_args(argv)
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {list(WORKLOADS)}")
    with tempfile.TemporaryDirectory(prefix="vfsprof-", dir="/tmp") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        shared = Path(tmp) / "share"
        make_tree(shared, 16 << 20)
        for name in args.workloads or list(WORKLOADS):
            print("\n".join(profile(name, args.seconds, args.in_flight, out, shared)), flush=True)
            print()


if __name__ == "__main__":
    main()
