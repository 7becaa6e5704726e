"""Socket-level part of hack/bench: the test frontend plays QEMU, no guest.

The driver (tests/support/throughput.py over frontend.py/fuse_driver.py) is Python too, so it
runs in its own process: sharing a GIL with our daemon would charge the driver's work to the
daemon and serialise the two. Each run is one fresh daemon (it exits when the driver
disconnects) and one driver process that runs every workload at every K and prints JSON.

Per workload the driver samples the daemon's CPU (utime+stime of its process tree, from
/proc) before and after, and its own CPU, so a reader can tell a daemon-bound figure from a
driver-bound one: with two cores, a workload whose driver CPU is close to its wall time is
limited by the driver, not the daemon.

    python -m hack.bench_socket --sock PATH --pid PID --seconds S   (the driver process)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from hack.bench_daemons import Daemon, DaemonSpec, tree_cpu
from tests.support import throughput
from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseDriver
from vhostfs.fuse import abi

IN_FLIGHT: Final = (1, 16)
FILE: Final = b"data"
DIRECTORY: Final = b"dir"
DIR_ENTRIES: Final = 100  # READDIRPLUS reads the first 4 KiB page: about 20 entries
DRIVER_TIMEOUT: Final = 300.0  # seconds for one driver process (8 workloads)


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One workload at one K against one daemon."""

    workload: str  # "READ 128 KiB", "READ 4 KiB", "LOOKUP+GETATTR", "READDIRPLUS 4 KiB"
    in_flight: int
    requests: int
    payload_bytes: int
    seconds: float  # wall
    daemon_cpu: float  # seconds of daemon CPU while the workload ran
    driver_cpu: float  # seconds of driver CPU while the workload ran

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mbps(self) -> float:
        return self.payload_bytes / throughput.MB / self.seconds

    @property
    def cpu_per_1k(self) -> float:
        return self.daemon_cpu * 1000 / self.requests if self.requests else 0.0


def make_tree(root: Path, file_size: int) -> None:
    """The shared directory: FILE of `file_size` bytes and DIRECTORY with small entries."""
    root.mkdir(parents=True)
    throughput.make_tree(root, file_size=file_size, entries=DIR_ENTRIES)


def _workloads(
    fuse: FuseDriver, seconds: float, k: int
) -> list[tuple[str, Callable[[], throughput.Throughput]]]:
    entry = fuse.lookup(abi.ROOT_ID, FILE)
    fh = fuse.open(entry.nodeid).fh
    dir_id = fuse.lookup(abi.ROOT_ID, DIRECTORY).nodeid
    size = entry.attr.size

    def read(n: int) -> Callable[[], throughput.Throughput]:
        return lambda: throughput.bench_read(fuse, entry.nodeid, fh, size, n, k, duration=seconds)

    return [
        ("READ 128 KiB", read(128 << 10)),
        ("READ 4 KiB", read(4 << 10)),
        (
            "LOOKUP+GETATTR",
            lambda: throughput.bench_lookup_getattr(fuse, abi.ROOT_ID, FILE, k, duration=seconds),
        ),
        (
            "READDIRPLUS 4 KiB",
            lambda: throughput.bench_readdirplus(fuse, dir_id, k, duration=seconds),
        ),
    ]


def drive(sock: str, daemon_pid: int, seconds: float) -> list[Sample]:
    """Connect as QEMU would, INIT, and run every workload at every K (driver process)."""
    options = FrontendOptions(queue_size=1024, memory_size=256 << 20)
    samples = []
    with Frontend.connect(sock, options) as frontend:
        fuse = FuseDriver(frontend)
        fuse.init()
        for k in IN_FLIGHT:
            for name, run in _workloads(fuse, seconds, k):
                daemon0, driver0 = tree_cpu(daemon_pid), time.process_time()
                result = run()
                daemon1, driver1 = tree_cpu(daemon_pid), time.process_time()
                samples.append(
                    Sample(
                        name,
                        k,
                        result.requests,
                        result.payload_bytes,
                        result.seconds,
                        daemon1 - daemon0,
                        driver1 - driver0,
                    )
                )
    return samples


@dataclasses.dataclass(frozen=True, slots=True)
class SocketRun:
    """One daemon process driven through every workload."""

    daemon: str  # DaemonSpec.key
    samples: tuple[Sample, ...]
    cpu_seconds: float  # whole run, from wait4
    peak_rss_kib: int


def run_one(spec: DaemonSpec, workdir: Path, shared: Path, seconds: float) -> SocketRun:
    """A fresh daemon plus a driver process against it; both gone on return."""
    sock = workdir / f"{spec.key}.sock"
    daemon = Daemon(spec, sock, shared, workdir / f"{spec.key}.socket.log")
    try:
        argv = [
            sys.executable,
            "-m",
            "hack.bench_socket",
            "--sock",
            str(sock),
            "--pid",
            str(daemon.pid),
            "--seconds",
            str(seconds),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=DRIVER_TIMEOUT)
    finally:
        usage = daemon.finish()
    if out.returncode != 0:
        raise RuntimeError(f"driver against {spec.label} failed:\n{out.stderr}\n{daemon.log()}")
    samples = tuple(Sample(**s) for s in json.loads(out.stdout))
    return SocketRun(spec.key, samples, usage.cpu_seconds, usage.peak_rss_kib)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="hack/bench's socket driver process")
    parser.add_argument("--sock", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the daemon, for its CPU time")
    parser.add_argument("--seconds", type=float, required=True, help="per workload")
    args = parser.parse_args(argv)
    samples = drive(args.sock, args.pid, args.seconds)
    json.dump([dataclasses.asdict(s) for s in samples], sys.stdout)


if __name__ == "__main__":
    main()
