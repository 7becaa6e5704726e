"""Socket-level throughput of a virtio-fs backend, driven by the test frontend.

`pump()` keeps K requests in flight and resubmits each one as soon as it completes, for a
fixed duration or count; the result is requests/s and payload MB/s. The driver's own cost
is kept small so it does not dominate what is measured: every request's guest buffers,
indirect table and in-header are prepared once and reused (a resubmission rewrites only the
8-byte unique, and for READ the offset), completions are collected in batches (one poll and
one eventfd read per batch) and the queue is kicked at most once per batch.

Workloads mirror what a guest does: READ of 128 KiB (readahead-sized, 16 + 32 pages) and
4 KiB, LOOKUP+GETATTR pairs (revalidation), READDIRPLUS of a directory's first page.

Run against the C virtiofsd (or any backend socket):

    .venv/bin/python -m tests.support.throughput [--sock PATH] [--seconds 2]
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.support.c_virtiofsd import CVirtiofsd
from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseCall, FuseDriver, FuseError
from vhostfs.fuse import abi
from vhostfs.fuse.abi import Opcode, OutHeader

MB: Final = 1_000_000
READ_OFFSET_AT: Final = 8  # byte offset of fuse_read_in.offset inside the READ arguments


@dataclass(frozen=True, slots=True)
class Throughput:
    workload: str
    in_flight: int
    requests: int  # completed
    payload_bytes: int  # reply bytes after the out headers
    seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mbps(self) -> float:
        return self.payload_bytes / MB / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return (
            f"{self.workload:<22} K={self.in_flight:<3} {self.rps:10.0f} req/s "
            f"{self.mbps:9.1f} MB/s  ({self.requests} in {self.seconds:.2f} s)"
        )


def pump(
    fuse: FuseDriver,
    pool: Sequence[FuseCall],
    in_flight: int,
    *,
    workload: str = "",
    duration: float | None = None,
    count: int | None = None,
    before_resubmit: Callable[[FuseCall], None] | None = None,
) -> Throughput:
    """Keep `in_flight` calls from `pool` outstanding until `duration` s or `count` requests.

    Idle calls are reused round-robin, so a pool of [LOOKUP, GETATTR] alternates the two even
    with one in flight. Every reply must be a success (FuseError otherwise).
    """
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    if len(pool) < in_flight:
        raise ValueError("pool smaller than the requests to keep in flight")
    limit = count if count is not None else 1 << 62
    qi = pool[0].queue
    queue = fuse.frontend.queues[qi]
    buf = fuse.frontend.mem.buf
    unpack_out = OutHeader.STRUCT.unpack_from
    timeout = fuse.frontend.options.timeout
    idle = collections.deque(pool)
    start = time.monotonic()
    stop_at = start + duration if duration is not None else float("inf")
    submitted = completed = payload = 0
    while submitted < min(in_flight, limit):
        fuse.add(idle.popleft())
        submitted += 1
    queue.flush()
    while completed < submitted:
        done = fuse.collect(qi, time.monotonic() + timeout)
        more = time.monotonic() < stop_at
        for call in done:
            length, error, _ = unpack_out(buf, call.out_gpa)
            if error:
                raise FuseError(-error, f"{Opcode(call.opcode).name} failed in the pump")
            payload += length - OutHeader.SIZE
            completed += 1
            idle.append(call)
        while more and submitted < limit and submitted - completed < in_flight:
            call = idle.popleft()
            if before_resubmit is not None:
                before_resubmit(call)
            fuse.add(call)
            submitted += 1
        queue.flush()
    return Throughput(workload, in_flight, completed, payload, time.monotonic() - start)


def bench_read(
    fuse: FuseDriver,
    nodeid: int,
    fh: int,
    file_size: int,
    size: int,
    in_flight: int,
    duration: float | None = None,
    count: int | None = None,
) -> Throughput:
    """READs of `size` bytes at consecutive offsets, wrapping before the end of the file."""
    span = max(file_size // size, 1)
    pool = [fuse.read_call(nodeid, fh, (i % span) * size, size) for i in range(in_flight)]
    position = [in_flight]

    def advance(call: FuseCall) -> None:
        offset = (position[0] % span) * size
        position[0] += 1
        fuse.set_args(call, READ_OFFSET_AT, offset.to_bytes(8, "little"))

    try:
        return pump(
            fuse,
            pool,
            in_flight,
            workload=f"READ {size >> 10} KiB",
            before_resubmit=advance,
            duration=duration,
            count=count,
        )
    finally:
        for call in pool:
            fuse.free(call)


def bench_lookup_getattr(
    fuse: FuseDriver,
    parent: int,
    name: bytes,
    in_flight: int,
    duration: float | None = None,
    count: int | None = None,
) -> Throughput:
    """Alternating LOOKUP(parent, name) and GETATTR(its node); FORGETs the lookups after."""
    nodeid = fuse.lookup(parent, name).nodeid
    entry_room = (OutHeader.SIZE, abi.EntryOut.SIZE)
    pool = []
    for _ in range(max(in_flight, 1)):
        pool.append(fuse.prepare(Opcode.LOOKUP, parent, name + b"\0", entry_room))
        pool.append(
            fuse.prepare(
                Opcode.GETATTR,
                nodeid,
                abi.GetattrIn(0, 0, 0).pack(),
                (OutHeader.SIZE, abi.AttrOut.SIZE),
            )
        )
    try:
        result = pump(
            fuse, pool, in_flight, workload="LOOKUP+GETATTR", duration=duration, count=count
        )
    finally:
        for call in pool:
            fuse.free(call)
    lookups = 1 + -(-result.requests // 2)  # upper bound: FORGET tolerates over-counting
    fuse.forget(nodeid, lookups)
    return result


def bench_readdirplus(
    fuse: FuseDriver,
    nodeid: int,
    in_flight: int,
    duration: float | None = None,
    count: int | None = None,
) -> Throughput:
    """READDIRPLUS of the first 4 KiB of a directory, over and over."""
    fh = fuse.opendir(nodeid).fh
    args = abi.ReadIn(fh, 0, 4096, 0, 0, 0, 0).pack()
    pool = [
        fuse.prepare(Opcode.READDIRPLUS, nodeid, args, (OutHeader.SIZE, 4096))
        for _ in range(in_flight)
    ]
    try:
        return pump(
            fuse, pool, in_flight, workload="READDIRPLUS 4 KiB", duration=duration, count=count
        )
    finally:
        for call in pool:
            fuse.free(call)
        fuse.releasedir(nodeid, fh)


def run_suite(
    fuse: FuseDriver,
    *,
    file: bytes,
    directory: bytes,
    seconds: float,
    in_flight: Sequence[int] = (1, 16),
) -> list[Throughput]:
    """Every workload at every K, on an INITed session; `file`/`directory` under the root."""
    entry = fuse.lookup(abi.ROOT_ID, file)
    fh = fuse.open(entry.nodeid).fh
    dir_id = fuse.lookup(abi.ROOT_ID, directory).nodeid
    results = []
    for k in in_flight:
        for size in (128 << 10, 4 << 10):
            results.append(
                bench_read(fuse, entry.nodeid, fh, entry.attr.size, size, k, duration=seconds)
            )
        results.append(bench_lookup_getattr(fuse, abi.ROOT_ID, file, k, duration=seconds))
        results.append(bench_readdirplus(fuse, dir_id, k, duration=seconds))
    fuse.release(entry.nodeid, fh)
    fuse.forget(entry.nodeid, 1)
    fuse.forget(dir_id, 1)
    return results


def make_tree(root: Path, file_size: int = 64 << 20, entries: int = 100) -> None:
    """The benchmark's shared directory: one large file and a directory of small ones."""
    with open(root / "data", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(file_size >> 20):
            f.write(chunk)
    (root / "dir").mkdir()
    for i in range(entries):
        (root / "dir" / f"entry-{i:04d}").write_bytes(b"x" * i)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sock",
        help="backend socket serving a make_tree() tree; default: "
        "start the C virtiofsd on a fresh tree",
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--queue-size", type=int, default=1024)
    parser.add_argument("--no-event-idx", action="store_true")
    args = parser.parse_args(argv)
    options = FrontendOptions(
        queue_size=args.queue_size, event_idx=not args.no_event_idx, memory_size=256 << 20
    )
    with tempfile.TemporaryDirectory() as tmp:
        daemon = None
        sock = args.sock
        if sock is None:
            Path(tmp, "src").mkdir()
            make_tree(Path(tmp, "src"))
            sock = os.path.join(tmp, "vhost.sock")
            daemon = CVirtiofsd(Path(tmp, "src"), Path(sock), "-o", "readdirplus")
        try:
            with Frontend.connect(sock, options) as frontend:
                fuse = FuseDriver(frontend)
                fuse.init()
                for result in run_suite(fuse, file=b"data", directory=b"dir", seconds=args.seconds):
                    print(result, flush=True)
        finally:
            if daemon is not None:
                daemon.close()


if __name__ == "__main__":
    main()
