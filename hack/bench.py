"""hack/bench: vhostfs against QEMU 7.2's C virtiofsd (cache=none), in a guest and at the socket.

    hack/bench [--quick] [--rounds N] [--json PATH] [--no-guest] [--no-socket] [--keep]

Every run measures both daemons, alternating them (the order rotates each round) so drift on
a shared machine hits both alike; the table shows medians over the rounds and ratios ours / C.

* Guest (hack/bench_guest.py): a QEMU TCG guest reads a big file sequentially, does seeded
  4 KiB random reads and walks a small-file tree; our daemon runs with ``--cache none`` (like
  for like) and, as an extra column, ``--cache auto`` (the default users get).
* Socket (hack/bench_socket.py): the test frontend, in its own process, drives each daemon
  with READ 128 KiB / 4 KiB, LOOKUP+GETATTR and READDIRPLUS at 1 and 16 requests in flight.

Ratios are throughput ratios (higher is better, 1.00x = parity) except for CPU and RSS,
where ours / C is a cost ratio (lower is better). Targets: >= 0.8x in the guest and for
128 KiB socket reads, >= 0.5x for small requests at the socket. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from hack import bench_guest, bench_socket
from hack.bench_daemons import C_VIRTIOFSD, OURS, OURS_AUTO, DaemonSpec, check_prerequisites

GUEST_SPECS: Final = (C_VIRTIOFSD, OURS, OURS_AUTO)
SOCKET_SPECS: Final = (C_VIRTIOFSD, OURS)
GUEST_TARGET: Final = 0.8
BIG_READ_TARGET: Final = 0.8
SMALL_REQUEST_TARGET: Final = 0.5
MIB: Final = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    guest: bench_guest.GuestSizes
    socket_seconds: float  # per workload and K
    socket_file: int  # bytes of the file READ at the socket


QUICK: Final = Plan(1, bench_guest.GuestSizes(32 * MIB, 1000, 500), 0.5, 16 * MIB)
FULL: Final = Plan(3, bench_guest.GuestSizes(256 * MIB, 20000, 5000), 2.0, 64 * MIB)


def rotated(specs: Sequence[DaemonSpec], round_no: int) -> list[DaemonSpec]:
    """The run order of round `round_no`: each daemon goes first in turn."""
    k = round_no % len(specs)
    return [*specs[k:], *specs[:k]]


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- running -------------------------------------------------------------------------------


def run_guest_rounds(plan: Plan, workdir: Path, accel: str) -> list[bench_guest.GuestRun]:
    shared = workdir / "guest-share"
    progress(f"guest: building the tree in {shared}")
    bench_guest.make_tree(shared, plan.guest)
    bench_guest.warm_host_cache(shared)
    runs = []
    for r in range(plan.rounds):
        for spec in rotated(GUEST_SPECS, r):
            run = bench_guest.run_one(spec, workdir, shared, plan.guest, accel)
            progress(
                f"guest round {r + 1}/{plan.rounds} {spec.label:<13} "
                f"seq {run.seq_mbps:7.1f} MB/s  rand {run.rand_iops:7.0f}/s  "
                f"walk {run.walk_seconds:6.2f} s  cpu {run.cpu_seconds:6.2f} s"
            )
            runs.append(run)
    return runs


def run_socket_rounds(plan: Plan, workdir: Path) -> list[bench_socket.SocketRun]:
    shared = workdir / "socket-share"
    bench_socket.make_tree(shared, plan.socket_file)
    bench_guest.warm_host_cache(shared)
    runs = []
    for r in range(plan.rounds):
        for spec in rotated(SOCKET_SPECS, r):
            run = bench_socket.run_one(spec, workdir, shared, plan.socket_seconds)
            progress(
                f"socket round {r + 1}/{plan.rounds} {spec.label:<13} "
                + "  ".join(f"{s.rps:.0f}" for s in run.samples)
                + " req/s"
            )
            runs.append(run)
    return runs


# ---- reporting -----------------------------------------------------------------------------


def median_of(runs: Iterable[Any], daemon: str, value: Callable[[Any], float]) -> float:
    return statistics.median(value(r) for r in runs if r.daemon == daemon)


def verdict(ratio: float, target: float) -> str:
    return f">={target:.1f} {'ok' if ratio >= target else 'BELOW'}"


def guest_table(runs: list[bench_guest.GuestRun], plan: Plan) -> list[str]:
    g = plan.guest
    rows: list[tuple[str, Callable[[bench_guest.GuestRun], float], str, bool]] = [
        (
            f"seq read {g.big_file // MIB} MiB, 1 MiB blocks (MB/s)",
            lambda r: r.seq_mbps,
            "{:.1f}",
            True,
        ),
        (f"random 4 KiB reads x{g.rand_reads} (reads/s)", lambda r: r.rand_iops, "{:.0f}", True),
        (
            f"metadata walk, {g.small_files} files (entries/s)",
            lambda r: r.walk_entries_per_s,
            "{:.0f}",
            True,
        ),
        ("  walk: find (s)", lambda r: r.walk_find_seconds, "{:.2f}", False),
        ("  walk: stat of every entry (s)", lambda r: r.walk_stat_seconds, "{:.2f}", False),
        ("  walk: tar to /dev/null (s)", lambda r: r.walk_tar_seconds, "{:.2f}", False),
        ("daemon CPU per boot (s)", lambda r: r.cpu_seconds, "{:.2f}", False),
        ("daemon peak RSS (MiB)", lambda r: r.peak_rss_kib / 1024, "{:.1f}", False),
    ]
    head = (
        f"{'guest (QEMU TCG, 1 vCPU)':<44}{'C':>10}{'ours none':>11}{'ours/C':>8}"
        f"{'target':>12}{'ours auto':>11}{'auto/C':>8}"
    )
    lines = [head, "-" * len(head)]
    for label, value, fmt, is_speed in rows:
        c, ours, auto = (median_of(runs, s.key, value) for s in GUEST_SPECS)
        ratio = ours / c if c else float("nan")
        target = verdict(ratio, GUEST_TARGET) if is_speed else ""
        lines.append(
            f"{label:<44}{fmt.format(c):>10}{fmt.format(ours):>11}{ratio:>7.2f}x"
            f"{target:>12}{fmt.format(auto):>11}{auto / c if c else 0:>7.2f}x"
        )
    return lines


def socket_table(runs: list[bench_socket.SocketRun]) -> list[str]:
    samples = [(run.daemon, s) for run in runs for s in run.samples]
    keys = list(dict.fromkeys((s.workload, s.in_flight) for _, s in samples))

    def med(
        daemon: str, key: tuple[str, int], value: Callable[[bench_socket.Sample], float]
    ) -> float:
        return statistics.median(
            value(s) for d, s in samples if d == daemon and (s.workload, s.in_flight) == key
        )

    head = (
        f"{'socket (test frontend, no guest)':<22}{'K':>3}{'C req/s':>10}{'ours req/s':>11}"
        f"{'C MB/s':>9}{'ours MB/s':>10}{'ours/C':>8}{'target':>12}"
        f"{'CPU s/1k: C':>13}{'ours':>7}{'ours/C':>8}{'drv busy C':>11}"
    )
    lines = [head, "-" * len(head)]
    for key in keys:
        workload, k = key
        c_rps, o_rps = med("c", key, lambda s: s.rps), med("ours", key, lambda s: s.rps)
        c_mb, o_mb = med("c", key, lambda s: s.mbps), med("ours", key, lambda s: s.mbps)
        c_cpu = med("c", key, lambda s: s.cpu_per_1k)
        o_cpu = med("ours", key, lambda s: s.cpu_per_1k)
        busy = med("c", key, lambda s: s.driver_cpu / s.seconds)
        ratio = o_rps / c_rps
        target = BIG_READ_TARGET if workload == "READ 128 KiB" else SMALL_REQUEST_TARGET
        lines.append(
            f"{workload:<22}{k:>3}{c_rps:>10.0f}{o_rps:>11.0f}{c_mb:>9.1f}{o_mb:>10.1f}"
            f"{ratio:>7.2f}x{verdict(ratio, target):>12}{c_cpu:>13.4f}{o_cpu:>7.4f}"
            f"{o_cpu / c_cpu if c_cpu else float('inf'):>7.1f}x{busy:>10.0%}"
        )
    for spec in SOCKET_SPECS:
        rss = median_of(runs, spec.key, lambda r: r.peak_rss_kib) / 1024
        cpu = median_of(runs, spec.key, lambda r: r.cpu_seconds)
        lines.append(f"{spec.label}: peak RSS {rss:.1f} MiB, CPU {cpu:.2f} s per driver run")
    return lines


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": qemu.stdout.splitlines()[0] if qemu.stdout else "?",
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (smoke)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3; quick 1)")
    parser.add_argument("--json", type=Path, help="save the raw numbers here")
    parser.add_argument("--no-guest", action="store_true", help="skip the QEMU guest part")
    parser.add_argument("--no-socket", action="store_true", help="skip the socket part")
    parser.add_argument(
        "--accel",
        choices=("tcg", "kvm"),
        default="tcg",
        help="guest acceleration (KVM guests hang on some hosts)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        plan = dataclasses.replace(plan, rounds=max(1, args.rounds))
    check_prerequisites()
    info = machine()
    # sun_path holds 108 bytes: keep the sockets under a short /tmp directory
    workdir = Path(tempfile.mkdtemp(prefix="vfsbench-", dir="/tmp"))
    try:
        guest = [] if args.no_guest else run_guest_rounds(plan, workdir, args.accel)
        sockets = [] if args.no_socket else run_socket_rounds(plan, workdir)
    finally:
        if args.keep:
            progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"hack/bench: median of {plan.rounds} alternating round(s); {info['cpus']} x "
        f"{info['cpu']}; {info['qemu']}; load at start {' '.join(info['loadavg_at_start'])}"
    )
    print("ratios are ours / C: throughput (higher is better) or CPU/RSS cost (lower is better)")
    if guest:
        print()
        print("\n".join(guest_table(guest, plan)))
    if sockets:
        print()
        print("\n".join(socket_table(sockets)))
    if args.json:
        raw = {
            "machine": info,
            "plan": dataclasses.asdict(plan),
            "guest": [dataclasses.asdict(r) for r in guest],
            "socket": [dataclasses.asdict(r) for r in sockets],
        }
        args.json.write_text(json.dumps(raw, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
