"""The daemons hack/bench compares, and what each one costs (CPU seconds, peak RSS).

Each measurement starts a fresh daemon: the C virtiofsd exits when its frontend disconnects
and ours does too, so one process serves exactly one guest boot or one driver run.

Accounting:

* CPU: the daemon is spawned by us (posix_spawn, no shell), so ``os.wait4`` returns its
  rusage, which also counts descendants it reaped. That matters for the C virtiofsd: its
  default namespace sandbox forks, and the child does all the work. The CPU spent before the
  socket appeared (Python imports, the C sandbox setup) is sampled from /proc at that moment
  and subtracted, so the figure is what serving cost.
* Peak RSS: ``ru_maxrss`` from the same rusage, the high-water mark of the largest process
  in the tree (VmHWM of the serving process).
* :func:`tree_cpu` sums utime+stime over a live process and its descendants from /proc; the
  socket driver uses it to charge CPU to each workload separately.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tests.support import vm

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT: Final = 20.0  # seconds for the socket to appear (Python start-up is ~0.5 s)
EXIT_TIMEOUT: Final = 10.0  # seconds a daemon gets to exit on its own, then again after SIGTERM

Argv = Callable[[Path, Path], list[str]]


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonSpec:
    """One daemon configuration under benchmark."""

    key: str  # short id used in JSON ("c", "ours", "ours-auto")
    label: str  # table heading
    argv: Argv  # (socket path, shared dir) -> command line


def c_virtiofsd(sock: Path, shared: Path) -> list[str]:
    """QEMU 7.2's C virtiofsd, cache=none, as the VM tests run it."""
    return vm.virtiofsd_command(sock, shared, cache="none")


def vhostfs(cache: str) -> Argv:
    """Our daemon with ``--cache cache``, run by this interpreter."""

    def argv(sock: Path, shared: Path) -> list[str]:
        return vm.vhostfs_command(sock, shared, cache=cache)

    return argv


C_VIRTIOFSD: Final = DaemonSpec("c", "C virtiofsd", c_virtiofsd)
OURS: Final = DaemonSpec("ours", "vhostfs none", vhostfs("none"))
OURS_AUTO: Final = DaemonSpec("ours-auto", "vhostfs auto", vhostfs("auto"))


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """What one daemon process cost from ready to exit."""

    cpu_seconds: float  # utime+stime after the socket appeared (descendants included)
    startup_cpu_seconds: float  # utime+stime before the socket appeared
    peak_rss_kib: int  # ru_maxrss
    exit_status: int  # os.waitstatus_to_exitcode (negative: killed by that signal)


def tree_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime of ``pid`` and its live descendants, in seconds; 0 if gone."""
    ticks = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:  # bounded: /proc lists each live pid once and `seen` stops cycles
        p = pending.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        # comm (field 2) may hold spaces and parentheses: split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += sum(int(f) for f in fields[11:15])  # fields 14-17 of proc(5)
        for task in tasks:
            try:
                pending += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return ticks / CLK_TCK


class Daemon:
    """A daemon process we spawned; see the module docstring for the accounting.

    Resource handling: owns the process and a pidfd; :meth:`finish` reaps the process
    (SIGTERM, then SIGKILL, if it does not exit on its own) and closes the pidfd.
    """

    def __init__(self, spec: DaemonSpec, sock: Path, shared: Path, log_path: Path) -> None:
        self.spec = spec
        self.sock = sock
        sock.unlink(missing_ok=True)
        argv = spec.argv(sock, shared)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.pid = os.posix_spawn(
                argv[0],
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,  # a ^C of the benchmark reaches us, and we stop the daemon
            )
        finally:
            os.close(log_fd)
        self.pidfd = os.pidfd_open(self.pid)
        self._usage: Usage | None = None
        self.log_path = log_path
        try:
            self._wait_ready()
        except BaseException:
            self.finish()
            raise
        self.startup_cpu = tree_cpu(self.pid)

    def _exited_within(self, seconds: float) -> bool:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(max(seconds, 0) * 1000))

    def _wait_ready(self) -> None:
        # Our daemon cannot take a listening fd, so the socket file is the only signal; the
        # pidfd wakes us at once if the daemon dies instead of starting.
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.sock.is_socket():
            if self._exited_within(0.02):
                raise RuntimeError(f"{self.spec.label} exited before listening:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.label}: no socket after {READY_TIMEOUT}s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def finish(self) -> Usage:
        """Wait for the daemon to exit (signalling it if it lingers); reap it; its usage."""
        if self._usage is not None:
            return self._usage
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._exited_within(EXIT_TIMEOUT):
                break
            os.kill(self.pid, sig)
        _, status, rusage = os.wait4(self.pid, 0)
        os.close(self.pidfd)
        startup = getattr(self, "startup_cpu", 0.0)
        self._usage = Usage(
            cpu_seconds=rusage.ru_utime + rusage.ru_stime - startup,
            startup_cpu_seconds=startup,
            peak_rss_kib=rusage.ru_maxrss,
            exit_status=os.waitstatus_to_exitcode(status),
        )
        return self._usage


def check_prerequisites() -> None:
    """Exit with a hint if the C virtiofsd is missing: the benchmark always compares."""
    if not os.access(vm.VIRTIOFSD_C, os.X_OK):
        sys.exit(f"{vm.VIRTIOFSD_C} not found: run hack/setup")
    if os.geteuid() != 0:
        sys.exit("hack/bench needs root (the C virtiofsd's sandbox, memfd guest RAM)")
