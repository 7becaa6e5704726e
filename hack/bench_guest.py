"""Guest part of hack/bench: a QEMU guest (tests/support/vm.py) reads through each daemon.

One boot per daemon and round. The guest mounts the share read-only and runs three phases,
each after ``drop_caches`` so every phase starts cold in the guest (the host's page cache is
warm for all daemons alike, since the tree is read once on the host before any run):

* seq: ``dd`` of the big file in 1 MiB blocks, SEQ_PASSES times (each after ``drop_caches``);
  the fastest pass counts. On this shared machine one pass scattered by up to 1.6x between
  boots for either daemon (other tenants only ever slow a pass down), more than the effect
  measured; the best of three is the usual remedy and treats every daemon alike;
* rand: ``vmtool randread`` of COUNT 4 KiB blocks at seeded offsets (the same for all);
* walk: ``find`` over the small-file tree, ``stat`` of every entry, ``tar`` to /dev/null.

Phases are timed inside the guest with CLOCK_MONOTONIC (``vmtool now``); the host only parses.
The guest also prints what it saw (bytes copied, entries found) and the host checks them, so a
daemon that fails a read cannot look fast.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Final

from hack.bench_daemons import Daemon, DaemonSpec
from tests.support import vm

MB: Final = 1_000_000
SEED: Final = 20240601  # vmtool randread's offsets: fixed so every daemon reads the same blocks
GUEST_TIMEOUT: Final = 900.0  # seconds per boot; TCG is slow and our daemon slower still
META_DIRS: Final = 50  # the small files are spread over this many directories
SEQ_PASSES: Final = 3  # sequential passes per boot; the fastest counts (module docstring)


@dataclasses.dataclass(frozen=True, slots=True)
class GuestSizes:
    big_file: int  # bytes, read sequentially
    rand_reads: int  # 4 KiB preads
    small_files: int  # files in the metadata tree


@dataclasses.dataclass(frozen=True, slots=True)
class GuestRun:
    """One boot against one daemon: phase times and what the daemon cost."""

    daemon: str  # DaemonSpec.key
    seq_seconds: float
    seq_bytes: int
    rand_seconds: float
    rand_reads: int
    walk_find_seconds: float
    walk_stat_seconds: float
    walk_tar_seconds: float
    walk_entries: int
    cpu_seconds: float  # daemon CPU over the whole boot (net of its start-up)
    peak_rss_kib: int
    boot_seconds: float  # QEMU start to exit

    @property
    def seq_mbps(self) -> float:
        return self.seq_bytes / MB / self.seq_seconds

    @property
    def rand_iops(self) -> float:
        return self.rand_reads / self.rand_seconds

    @property
    def walk_seconds(self) -> float:
        return self.walk_find_seconds + self.walk_stat_seconds + self.walk_tar_seconds

    @property
    def walk_entries_per_s(self) -> float:
        return self.walk_entries / self.walk_seconds


def make_tree(root: Path, sizes: GuestSizes) -> None:
    """The share: ``big`` (random bytes) and ``meta/dNN/fNNNN`` small files of 0-2 KiB."""
    root.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    with open(root / "big", "wb") as f:
        for _ in range(sizes.big_file >> 20):
            f.write(chunk)
    meta = root / "meta"
    for d in range(META_DIRS):
        (meta / f"d{d:02d}").mkdir(parents=True)
    for i in range(sizes.small_files):
        (meta / f"d{i % META_DIRS:02d}" / f"f{i:05d}").write_bytes(chunk[: (i * 37) % 2048])


def warm_host_cache(root: Path) -> None:
    """Read every file once so no daemon pays for the host's disk."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass


def guest_script(sizes: GuestSizes) -> str:
    """The busybox ash script; prints ``T name seconds`` marks and the checks' raw lines."""
    return f"""\
mount -t virtiofs -o ro share /mnt
t() {{ echo "T $1 $(vmtool now)"; }}
cold() {{ sync; echo 3 > /proc/sys/vm/drop_caches; }}
for pass in {" ".join(str(i) for i in range(SEQ_PASSES))}; do
  cold; t seq${{pass}}a
  dd if=/mnt/big of=/dev/null bs=1M 2> /tmp/dd
  t seq${{pass}}b
  sed 's/^/DD /' /tmp/dd
done
cold
vmtool randread /mnt/big {sizes.rand_reads} {SEED}
cold; t walk0
echo "N $(find /mnt/meta | wc -l)"
t walk1
find /mnt/meta | xargs stat -c '%i %s' > /dev/null
t walk2
tar cf /dev/null -C /mnt meta
t walk3
"""


_MARK = re.compile(r"^T (\w+) ([0-9.]+)$", re.M)
_DD = re.compile(r"^DD (\d+)\+(\d+) records in$", re.M)  # busybox dd: full+partial blocks
_RAND = re.compile(r"^reads=(\d+) bytes=(\d+) seconds=([0-9.]+)$", re.M)
_ENTRIES = re.compile(r"^N (\d+)$", re.M)


def parse(text: str, daemon: str, sizes: GuestSizes, cpu: float, rss: int, boot: float) -> GuestRun:
    """The guest's output as a GuestRun; ValueError if a phase is missing or came up short."""
    marks = {m[1]: float(m[2]) for m in _MARK.finditer(text)}
    dds, rand, entries = _DD.findall(text), _RAND.search(text), _ENTRIES.search(text)
    if len(dds) != SEQ_PASSES or rand is None or entries is None:
        raise ValueError(f"incomplete guest output:\n{text}")
    if len(marks) != 2 * SEQ_PASSES + 4:
        raise ValueError(f"incomplete guest output:\n{text}")
    expected_entries = 1 + META_DIRS + sizes.small_files  # find lists meta itself too
    # dd reads 1 MiB blocks; every pass must have read the whole file in full blocks.
    short = [f"{full}+{partial}" for full, partial in dds
             if partial != "0" or int(full) << 20 != sizes.big_file]  # fmt: skip
    if short or int(entries[1]) != expected_entries:
        raise ValueError(f"guest read {short} and saw {entries[1]} entries:\n{text}")
    passes = [marks[f"seq{i}b"] - marks[f"seq{i}a"] for i in range(SEQ_PASSES)]
    return GuestRun(
        daemon=daemon,
        seq_seconds=min(passes),
        seq_bytes=sizes.big_file,
        rand_seconds=float(rand[3]),
        rand_reads=int(rand[1]),
        walk_find_seconds=marks["walk1"] - marks["walk0"],
        walk_stat_seconds=marks["walk2"] - marks["walk1"],
        walk_tar_seconds=marks["walk3"] - marks["walk2"],
        walk_entries=int(entries[1]),
        cpu_seconds=cpu,
        peak_rss_kib=rss,
        boot_seconds=boot,
    )


def run_one(
    spec: DaemonSpec, workdir: Path, shared: Path, sizes: GuestSizes, accel: str
) -> GuestRun:
    """Boot one guest against a fresh daemon; the daemon is reaped before returning."""
    sock = workdir / f"{spec.key}.sock"
    log = workdir / f"{spec.key}.guest.log"
    daemon = Daemon(spec, sock, shared, log)
    try:
        device = vm.VirtioFsDevice(socket_path=sock, tag="share", log_path=log)
        result = vm.run_guest(
            guest_script(sizes),
            fs_devices=[device],
            accel=accel,
            timeout=GUEST_TIMEOUT,
            memory_mib=1024,
        ).check()
    finally:
        usage = daemon.finish()
    return parse(
        result.text, spec.key, sizes, usage.cpu_seconds, usage.peak_rss_kib, result.duration
    )
