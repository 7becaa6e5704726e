"""Boot a real QEMU guest that talks to a vhost-user virtio-fs daemon, run a script, collect.

Design:

* The guest is the host's Debian cloud kernel plus the busybox initramfs built (and cached) by
  ``hack/vm/initramfs.py``.  Each run appends a small cpio with the test script and a random
  nonce, so a script's output can never forge the harness's framing.
* Serial port 0 is the console (kernel log, the script's stderr streamed live, exit marker);
  serial port 1 is the *result port*: after the script exits, ``/init`` writes one framed record
  per boot (``@@VHOSTFS-RESULT nonce boot status stdout_len stderr_len@@`` + bytes + END line).
  Lengths make stdout byte exact even if it holds marker-like text or no trailing newline.
  Both ports are QEMU ``file`` chardevs, read after QEMU exits.
* The guest powers itself off (``poweroff -f``) and QEMU runs with ``-no-reboot``, so the
  harness simply waits for the QEMU process, with a deadline; on timeout QEMU is killed and the
  console log is part of the failure.  No sleeps anywhere.
* Reboot mode (``boots > 1``): no ``-no-reboot``; a tiny raw "state" virtio-blk disk (serial
  ``vhostfs-state``) holds the boot counter, ``/init`` exports it as ``$BOOT`` and reboots with
  ``reboot -f`` after each successful boot but the last.  Same QEMU, same daemon connection.
* Acceleration: KVM is probed once per process by booting a trivial guest under a short
  deadline (guests hang under KVM on some hosts); otherwise TCG.  ``VHOSTFS_ACCEL=tcg|kvm``
  skips the probe.
* Extra drives (``extra_drives``): host files attached as read-only raw virtio-blk disks with
  serial ``vhostfs-extra<i>``; the guest finds them with :func:`extra_drives_script` (e.g. a
  RAFS v6 bootstrap and its blob, for the kernel's own EROFS driver).  Any size works: QEMU
  7.2 rounds a raw file up to whole 512-byte sectors and the guest reads the tail as zeros.
* Control port (``control_socket``): a third serial port (guest ``/dev/ttyS2``) that QEMU
  connects, as a client, to a unix socket the *host* listens on (:class:`ControlChannel`).  It
  carries lines both ways while the guest runs, so a test can interleave host actions (API
  calls, host-side checks) with guest steps during one boot: the guest writes a line and blocks
  reading the host's reply (:data:`CONTROL_SCRIPT` has the shell side).  Run the guest in a
  thread; every host wait on the channel has a deadline.  :meth:`ControlChannel.stop_vmm` ends
  QEMU from the host (SIGTERM, as a VMM manager would) when the guest cannot finish by itself;
  the run then returns a result with ``stopped_by_host`` set instead of raising.
* Daemons: :func:`start_daemon` runs any daemon command (the C virtiofsd or ours) and waits for
  its socket; :func:`virtiofsd_command` builds the C virtiofsd command line QEMU 7.2 ships,
  :func:`vhostfs_command` / :func:`vhostfs_rafs_command` ours (a directory / a RAFS image).

Inside the guest the script runs as ``sh -e`` (busybox ash) with ``$BOOT``, ``$BOOTS`` and
``$SCRATCH`` (the scratch disk device, if any) set, virtiofs/fuse/erofs/overlay/virtio_blk loaded,
and ``vmtool`` on PATH.  It mounts shares itself: ``mount -t virtiofs TAG /mnt``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from hack.vm import initramfs

QEMU: Final = "qemu-system-x86_64"
VIRTIOFSD_C: Final = "/usr/lib/qemu/virtiofsd"
#: the C virtiofsd and QEMU both limit sun_path; fail early with a clear message instead
MAX_SOCKET_PATH: Final = 107
KVM_PROBE_TIMEOUT: Final = 5.0  # a working KVM boot takes ~1 s; a hung one never gets to /init
SCRATCH_DEFAULT_MIB: Final = 64
EXTRA_SERIAL: Final = "vhostfs-extra"  # + index; virtio-blk serials hold at most 20 bytes
CONSOLE_TAIL: Final = 12000  # characters of console log quoted in failure messages
CONTROL_TTY: Final = "/dev/ttyS2"  # the third -serial; ttyS0 console, ttyS1 result port
CONTROL_LINE_MAX: Final = 4096  # bytes; a longer "line" means the guest lost the framing
#: QEMU's message when a signal ends it (main loop, qemu_system_killed); tells a host stop
#: (ControlChannel.stop_vmm) apart from a crash
QEMU_KILLED_MESSAGE: Final = "terminating on signal"


class GuestError(AssertionError):
    """The guest could not be run or did not report (not: the script failed).

    An AssertionError so pytest shows it as a test failure with the full message.
    """


class GuestTimeout(GuestError):
    """QEMU did not exit before the deadline and was killed."""


@dataclasses.dataclass(frozen=True, slots=True)
class VirtioFsDevice:
    """One ``vhost-user-fs-pci`` device; the daemon must already listen on ``socket_path``."""

    socket_path: Path | str
    tag: str  # mount tag, at most 36 bytes (virtio-fs config space)
    queue_size: int = 1024
    num_request_queues: int = 1
    packed: bool = False
    log_path: Path | None = None  # the daemon's log, quoted in failure messages


@dataclasses.dataclass(frozen=True, slots=True)
class BootResult:
    """What one boot's script produced."""

    boot: int  # 1-based
    exit_code: int  # the script's status (200+ = /init itself failed)
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (replacement characters for invalid bytes)."""
        return self.stdout.decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True, slots=True)
class GuestResult:
    """The outcome of a guest run: one :class:`BootResult` per boot that reached its end."""

    boots: tuple[BootResult, ...]
    console: str  # full serial console log (kernel + streamed stderr + markers)
    accel: str
    duration: float  # seconds, QEMU start to exit
    stopped_by_host: bool = False  # QEMU was ended by a signal before every boot reported

    @property
    def exit_code(self) -> int:
        """First non-zero boot status, else 0."""
        return next((b.exit_code for b in self.boots if b.exit_code), 0)

    @property
    def stdout(self) -> bytes:
        """stdout of the last boot."""
        return self.boots[-1].stdout

    @property
    def stderr(self) -> bytes:
        return self.boots[-1].stderr

    @property
    def text(self) -> str:
        return self.boots[-1].text

    def explain(self) -> str:
        """A failure message: statuses, each boot's stderr and the console tail."""
        parts = [f"accel={self.accel} duration={self.duration:.1f}s"
                 + (" (stopped by the host)" if self.stopped_by_host else "")]
        for b in self.boots:
            parts.append(f"--- boot {b.boot}: exit {b.exit_code}, stderr:\n"
                         + b.stderr.decode("utf-8", "replace"))
        parts.append("--- console (tail):\n" + self.console[-CONSOLE_TAIL:])
        return "\n".join(parts)

    def check(self) -> GuestResult:
        """Return self if every boot's script exited 0, else raise GuestError with details."""
        if self.stopped_by_host:
            raise GuestError(f"the guest was stopped before it finished\n{self.explain()}")
        if self.exit_code != 0:
            raise GuestError(f"guest script failed\n{self.explain()}")
        return self


# ---- acceleration --------------------------------------------------------------------------


@functools.cache
def accelerator() -> str:
    """``kvm`` if a KVM guest boots here, else ``tcg``; probed once per process."""
    forced = os.environ.get("VHOSTFS_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise GuestError(f"VHOSTFS_ACCEL must be kvm or tcg, not {forced!r}")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        Guest(accel="kvm").run("true", timeout=KVM_PROBE_TIMEOUT).check()
    except GuestError:
        return "tcg"
    return "kvm"


# ---- the guest -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Guest:
    """A guest configuration; :meth:`run` boots it once (``boots`` times in reboot mode)."""

    fs_devices: tuple[VirtioFsDevice, ...] = ()
    memory_mib: int = 512
    scratch_disk_mib: int = 0  # 0 = no scratch disk; else a zeroed raw virtio-blk disk
    boots: int = 1
    accel: str | None = None  # None = accelerator()
    extra_cmdline: str = ""
    extra_drives: tuple[Path, ...] = ()  # read-only raw virtio-blk disks, see extra_drives_script
    control_socket: Path | None = None  # a listening ControlChannel's path -> guest /dev/ttyS2

    def qemu_argv(self, image: initramfs.GuestImage, initrd: Path, workdir: Path,
                  accel: str) -> list[str]:
        """The QEMU command line (also handy to reproduce a failure by hand)."""
        mem = self.memory_mib
        argv = [
            QEMU, "-M", "pc", "-accel", accel, "-smp", "1", "-m", str(mem),
            "-nodefaults", "-no-user-config", "-display", "none",
            # vhost-user needs guest RAM in a shareable fd the daemon can mmap
            "-object", f"memory-backend-memfd,id=mem,size={mem}M,share=on",
            "-numa", "node,memdev=mem",
            "-kernel", str(image.kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 quiet {self.extra_cmdline}".strip(),
            "-chardev", f"file,id=console,path={workdir / 'console.log'}",
            "-serial", "chardev:console",
            "-chardev", f"file,id=result,path={workdir / 'result.log'}",
            "-serial", "chardev:result",
        ]
        if self.control_socket is not None:
            # client mode: QEMU connects at start-up, so the host must already listen
            argv += ["-chardev", f"socket,id=control,path={self.control_socket}",
                     "-serial", "chardev:control"]
        if accel == "kvm":
            argv += ["-cpu", "host"]
        if self.boots == 1:
            argv.append("-no-reboot")
        for i, dev in enumerate(self.fs_devices):
            argv += [
                "-chardev", f"socket,id=fs{i},path={dev.socket_path}",
                "-device",
                f"vhost-user-fs-pci,chardev=fs{i},tag={dev.tag},queue-size={dev.queue_size},"
                f"num-request-queues={dev.num_request_queues},"
                f"packed={'on' if dev.packed else 'off'}",
            ]
        for name in ("state", "scratch"):
            disk = workdir / f"{name}.img"
            if disk.exists():
                argv += [
                    "-drive", f"file={disk},if=none,format=raw,id={name},cache=unsafe",
                    "-device", f"virtio-blk-pci,drive={name},serial=vhostfs-{name}",
                ]
        for i, path in enumerate(self.extra_drives):
            argv += [
                "-drive", f"file={_qemu_path(path)},if=none,format=raw,id=extra{i},readonly=on",
                "-device", f"virtio-blk-pci,drive=extra{i},serial={EXTRA_SERIAL}{i}",
            ]
        return argv

    def run(self, script: str, *, timeout: float = 60.0, workdir: Path | None = None,
            diagnostics: Sequence[Path] = ()) -> GuestResult:
        """Boot, run ``script`` in the guest, wait for QEMU to exit.

        Args:
            script: shell script for busybox ash, run with ``sh -e``.
            timeout: deadline in seconds for the whole run (all boots); QEMU is killed after it.
            workdir: where logs, the initrd and disks go (kept); default a temporary directory,
                removed afterwards unless VHOSTFS_VM_KEEP=1.
            diagnostics: extra log files (e.g. the daemon's) quoted in failure messages.

        Returns the result whatever the script's status; call ``.check()`` to require success.

        Raises:
            GuestError: QEMU failed, timed out, or a boot ended without a result record.
        """
        self._validate()
        image = guest_image()
        diagnostics = [*diagnostics, *(d.log_path for d in self.fs_devices if d.log_path)]
        accel = self.accel or accelerator()
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            return self._run_in(script, image, accel, workdir, timeout, diagnostics)
        # a failure message names the workdir; set VHOSTFS_VM_KEEP=1 to keep temporary ones
        tmp = Path(tempfile.mkdtemp(prefix="vhostfs-vm-"))
        try:
            return self._run_in(script, image, accel, tmp, timeout, diagnostics)
        finally:
            if os.environ.get("VHOSTFS_VM_KEEP") != "1":
                shutil.rmtree(tmp, ignore_errors=True)

    def _validate(self) -> None:
        if self.boots < 1:
            raise ValueError("boots must be >= 1")
        for dev in self.fs_devices:
            path = str(dev.socket_path)
            if len(path.encode()) > MAX_SOCKET_PATH:
                raise GuestError(f"socket path longer than {MAX_SOCKET_PATH} bytes: {path}")
            if not Path(path).is_socket():
                raise GuestError(f"no daemon socket at {path} (start the daemon first)")
            if not 0 < len(dev.tag.encode()) <= 36 or "," in dev.tag:
                raise ValueError(f"bad virtio-fs tag {dev.tag!r}")
        for drive in self.extra_drives:
            if not drive.is_file():
                raise GuestError(f"extra drive {drive} is not a file")
        if self.control_socket is not None and not self.control_socket.is_socket():
            raise GuestError(f"no ControlChannel listening at {self.control_socket}")

    def _run_in(self, script: str, image: initramfs.GuestImage, accel: str, workdir: Path,
                timeout: float, diagnostics: Sequence[Path]) -> GuestResult:
        nonce = secrets.token_hex(8)
        initrd = workdir / "initrd.cpio"
        with initrd.open("wb") as f:
            with image.initramfs.open("rb") as base:
                shutil.copyfileobj(base, f)
            f.write(initramfs.boot_archive(script, {"NONCE": nonce, "BOOTS": str(self.boots)}))
        for name in ("console.log", "result.log", "state.img", "scratch.img"):
            (workdir / name).unlink(missing_ok=True)
        if self.boots > 1:
            _make_disk(workdir / "state.img", 1)
        if self.scratch_disk_mib:
            _make_disk(workdir / "scratch.img", self.scratch_disk_mib)
        argv = self.qemu_argv(image, initrd, workdir, accel)
        (workdir / "qemu.cmd").write_text(shlex.join(argv) + "\n")
        start = time.monotonic()
        with (workdir / "qemu.stderr").open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True)
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise GuestTimeout(
                    f"guest did not finish within {timeout:.0f}s (accel={accel}); QEMU killed\n"
                    + _diagnose(workdir, diagnostics)
                ) from None
            finally:
                _kill(proc)
        duration = time.monotonic() - start
        if returncode != 0:
            raise GuestError(f"QEMU exited with status {returncode}\n"
                             + _diagnose(workdir, diagnostics))
        boots = _parse_results((workdir / "result.log").read_bytes(), nonce)
        console = _read_text(workdir / "console.log")
        stopped = QEMU_KILLED_MESSAGE in _read_text(workdir / "qemu.stderr")
        result = GuestResult(boots=boots, console=console, accel=accel, duration=duration,
                             stopped_by_host=stopped)
        if stopped:
            return result  # whatever boots reported before the host pulled the plug
        expected = self.boots if result.exit_code == 0 else boots[-1].boot if boots else 1
        if len(boots) != expected:
            raise GuestError(
                f"{len(boots)} result record(s) for {expected} boot(s): the guest crashed, or the"
                " script powered off / rebooted itself (return instead; /init reboots)\n"
                + _diagnose(workdir, diagnostics)
            )
        return result


def run_guest(
    script: str,
    *,
    fs_devices: Sequence[VirtioFsDevice] = (),
    timeout: float = 60.0,
    memory_mib: int = 512,
    scratch_disk: bool | int = False,
    boots: int = 1,
    accel: str | None = None,
    extra_cmdline: str = "",
    workdir: Path | None = None,
    diagnostics: Sequence[Path] = (),
    extra_drives: Sequence[Path] = (),
    control_socket: Path | None = None,
) -> GuestResult:
    """Boot a guest with ``fs_devices``, run ``script``, return its result (see :class:`Guest`).

    ``scratch_disk``: True for a 64 MiB zeroed disk, an int for that many MiB; the guest finds it
    at ``$SCRATCH``.  ``boots`` > 1 selects reboot mode (``$BOOT`` = 1, 2, ...).
    ``extra_drives``: files attached read-only as virtio-blk disks, in order; start the script
    with :func:`extra_drives_script` to get their devices as ``$EXTRA0``, ``$EXTRA1``, ...
    ``control_socket``: the path of a listening :class:`ControlChannel` (guest ``/dev/ttyS2``).
    """
    scratch = SCRATCH_DEFAULT_MIB if scratch_disk is True else int(scratch_disk)
    guest = Guest(fs_devices=tuple(fs_devices), memory_mib=memory_mib, scratch_disk_mib=scratch,
                  boots=boots, accel=accel, extra_cmdline=extra_cmdline,
                  extra_drives=tuple(Path(p) for p in extra_drives),
                  control_socket=control_socket)
    return guest.run(script, timeout=timeout, workdir=workdir, diagnostics=diagnostics)


def extra_drives_script(count: int) -> str:
    """Guest shell lines setting ``EXTRA<i>=/dev/vdX`` for the first ``count`` extra drives.

    Disks are matched by serial, not probe order; the lines fail the script if one is missing.
    """
    lines = ["for dev in /sys/block/vd*; do",
             "  [ -e \"$dev/serial\" ] || continue",
             "  case \"$(cat \"$dev/serial\")\" in"]
    lines += [f"  {EXTRA_SERIAL}{i}) EXTRA{i}=/dev/${{dev##*/}} ;;" for i in range(count)]
    lines += ["  esac", "done"]
    lines += [f"[ -n \"$EXTRA{i}\" ] || {{ echo 'no extra drive {i}' >&2; exit 1; }}"
              for i in range(count)]
    return "\n".join(lines) + "\n"


# ---- control port --------------------------------------------------------------------------

#: Guest shell side of the control port; put it at the top of a script.  ``ctl_send LINE``
#: writes one line to the host; ``ctl_ask LINE`` writes it and blocks until the host replies,
#: leaving the reply in ``$CTL_REPLY``; a reply of ``abort`` (the host test failed) ends the
#: script at once with status 99 instead of running on against a host that gave up.
#: The port is opened once (fd 3) and kept open: bytes that reach a closed tty are dropped.
CONTROL_SCRIPT: Final = f"""\
stty -F {CONTROL_TTY} raw -echo
exec 3<> {CONTROL_TTY}
ctl_send() {{ printf '%s\\n' "$*" >&3; }}
ctl_ask() {{
\tctl_send "$@"
\tread -r CTL_REPLY <&3
\t[ "$CTL_REPLY" != abort ] || {{ echo "host aborted at: $*" >&2; exit 99; }}
}}
"""


class ControlChannel:
    """Host end of a guest's control port: one line at a time, each wait with a deadline.

    Listens on ``path`` from construction (QEMU connects as a client when it starts, see
    :attr:`Guest.control_socket`); :meth:`accept` takes QEMU's connection.  Lines are UTF-8
    without the newline.  Not thread-safe: one host thread talks, the guest runs in another.
    """

    def __init__(self, path: Path) -> None:
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            raise GuestError(f"socket path longer than {MAX_SOCKET_PATH} bytes: {path}")
        path.unlink(missing_ok=True)
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._conn: socket.socket | None = None
        self._buffer = b""
        self._wake_r, self._wake_w = socket.socketpair()  # cancel_accept -> accept returns
        self.vmm_pid: int | None = None  # QEMU's pid, from the connection's peer credentials

    def accept(self, timeout: float) -> None:
        """Wait for QEMU to connect.

        Raises:
            GuestTimeout: nothing connected within ``timeout`` seconds.
            GuestError: :meth:`cancel_accept` was called (e.g. the guest run already ended).
        """
        ready, _, _ = select.select([self._listener, self._wake_r], [], [], timeout)
        if self._listener not in ready:
            if ready:
                raise GuestError(f"gave up waiting for QEMU on {self.path} (run ended)")
            raise GuestTimeout(f"QEMU did not connect to {self.path} in {timeout:.0f}s")
        conn, _ = self._listener.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.vmm_pid = struct.unpack("3i", creds)[0]
        self._conn = conn

    def receive(self, timeout: float) -> str:
        """The guest's next line.  GuestTimeout after ``timeout`` s, GuestError on EOF."""
        conn = self._connection()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestTimeout(f"no line from the guest within {timeout:.0f}s"
                                   f" (partial: {self._buffer[-200:]!r})")
            conn.settimeout(remaining)
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue  # the loop condition reports it
            if not data:
                raise GuestError("the guest's control port closed (QEMU exited)"
                                 f" (partial: {self._buffer[-200:]!r})")
            self._buffer += data
            if len(self._buffer) > CONTROL_LINE_MAX and b"\n" not in self._buffer:
                raise GuestError(f"control line longer than {CONTROL_LINE_MAX} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")

    def expect(self, expected: str, timeout: float) -> None:
        """Receive one line and require it to be ``expected`` (GuestError otherwise)."""
        line = self.receive(timeout)
        if line != expected:
            raise GuestError(f"guest said {line!r}, expected {expected!r}")

    def send(self, line: str) -> None:
        """Send one line (the guest's ``ctl_ask`` is blocked reading it)."""
        if "\n" in line:
            raise ValueError("one line at a time")
        self._connection().sendall(line.encode() + b"\n")

    def cancel_accept(self) -> None:
        """Make a pending or later :meth:`accept` give up; safe from any thread.

        Hook it to the guest's thread (``future.add_done_callback``) so a QEMU that fails
        to start ends the wait at once.
        """
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # closed: nobody is waiting any more

    def stop_vmm(self) -> None:
        """End QEMU from the host (SIGTERM: QEMU exits 0 and says it was signalled).

        For guests that cannot finish by themselves, e.g. after their daemon went away.
        """
        if self.vmm_pid is not None:
            try:
                os.kill(self.vmm_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # already gone

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self.path.unlink(missing_ok=True)

    def _connection(self) -> socket.socket:
        if self._conn is None:
            raise GuestError("the control channel has no VMM connected (call accept first)")
        return self._conn

    def __enter__(self) -> ControlChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- daemons -------------------------------------------------------------------------------


def virtiofsd_command(socket_path: Path | str, shared_dir: Path | str, *, cache: str = "none",
                      xattr: bool = True) -> list[str]:
    """The C virtiofsd (QEMU 7.2) command serving ``shared_dir`` on ``socket_path``."""
    argv = [VIRTIOFSD_C, f"--socket-path={socket_path}", "-o", f"source={shared_dir}",
            "-o", f"cache={cache}"]
    if xattr:
        argv += ["-o", "xattr"]
    return argv


def vhostfs_command(socket_path: Path | str, shared_dir: Path | str, *,
                    cache: str = "auto") -> list[str]:
    """Our daemon (this checkout, run by the current interpreter) serving ``shared_dir``."""
    return [sys.executable, "-m", "vhostfs", "virtiofs", "--sock", str(socket_path),
            "--shared-dir", str(shared_dir), "--cache", cache]


def vhostfs_rafs_command(socket_path: Path | str, bootstrap: Path | str,
                         blob_dir: Path | str) -> list[str]:
    """Our daemon serving the RAFS image ``bootstrap`` with its blobs in ``blob_dir``."""
    return [sys.executable, "-m", "vhostfs", "virtiofs", "--sock", str(socket_path),
            "--bootstrap", str(bootstrap), "--localfs-dir", str(blob_dir)]


@dataclasses.dataclass(slots=True)
class DaemonProcess:
    """A running daemon; its stdout+stderr go to ``log_path``."""

    proc: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path

    def log(self) -> str:
        return _read_text(self.log_path)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(self.proc)
        return self.proc.wait()


@contextmanager
def start_daemon(argv: Sequence[str], socket_path: Path | str, *, log_path: Path,
                 ready_timeout: float = 10.0) -> Iterator[DaemonProcess]:
    """Run a vhost-user daemon until the block ends; yields once its socket exists.

    The socket is not probed by connecting: a vhost-user backend serves one frontend and the
    C virtiofsd exits when that first connection closes.  Readiness is polled by waiting on the
    process itself in short slices (which also notices a daemon that dies at startup).

    Raises:
        GuestError: the daemon exited or its socket did not appear within ``ready_timeout``.
    """
    socket_path = Path(socket_path)
    socket_path.unlink(missing_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    daemon = DaemonProcess(proc=proc, socket_path=socket_path, log_path=log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while not socket_path.is_socket():
            if time.monotonic() > deadline:
                raise GuestError(f"daemon socket {socket_path} did not appear within "
                                 f"{ready_timeout}s\n{argv}\n{daemon.log()}")
            try:
                status = proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
            raise GuestError(f"daemon exited with status {status} before listening\n{argv}\n"
                             f"{daemon.log()}")
        yield daemon
    finally:
        daemon.stop()


# ---- helpers -------------------------------------------------------------------------------


@functools.cache
def guest_image() -> initramfs.GuestImage:
    """The cached kernel + base initramfs (built on first use); GuestError if unavailable."""
    if shutil.which(QEMU) is None:
        raise GuestError(f"{QEMU} not found; {initramfs.SETUP_HINT}")
    try:
        return initramfs.build_base_image()
    except initramfs.SetupError as e:
        raise GuestError(str(e)) from e


def _qemu_path(path: Path) -> str:
    # QEMU's -drive option parser splits on commas; a doubled comma is a literal one
    return str(path).replace(",", ",,")


def _make_disk(path: Path, mib: int) -> None:
    with path.open("wb") as f:
        f.truncate(mib << 20)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _diagnose(workdir: Path, extra: Sequence[Path]) -> str:
    parts = [f"workdir: {workdir}", "--- qemu stderr:", _read_text(workdir / "qemu.stderr"),
             "--- console (tail):", _read_text(workdir / "console.log")[-CONSOLE_TAIL:],
             "--- result port (tail):", _read_text(workdir / "result.log")[-4000:]]
    for path in extra:
        parts += [f"--- {path} (tail):", _read_text(path)[-CONSOLE_TAIL:]]
    return "\n".join(parts)


_HEADER = re.compile(rb"\n@@VHOSTFS-RESULT ([0-9a-f]+) (\d+) (\d+) (\d+) (\d+)@@\n")


def _parse_results(data: bytes, nonce: str) -> tuple[BootResult, ...]:
    """Decode the framed records of the result port; foreign or torn records are skipped."""
    boots: list[BootResult] = []
    pos = 0
    while (m := _HEADER.search(data, pos)) is not None:
        pos = m.end()
        if m.group(1).decode() != nonce:
            continue
        boot, status, out_len, err_len = (int(g) for g in m.groups()[1:])
        body_end = pos + out_len + err_len
        end_line = b"@@VHOSTFS-END %s %d@@\n" % (nonce.encode(), boot)
        if data[body_end:body_end + len(end_line)] != end_line:
            continue
        boots.append(BootResult(boot=boot, exit_code=status, stdout=data[pos:pos + out_len],
                                stderr=data[pos + out_len:body_end]))
        pos = body_end + len(end_line)
    return tuple(boots)
