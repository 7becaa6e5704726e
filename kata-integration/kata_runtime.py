"""Kata Containers' two runtimes as clients of nydusd, replayed call for call.

reference/nydusd-interface.md section 3: how the Go runtime (virtcontainers/nydusd.go) and
runtime-rs (resource/src/share_fs/nydus) start the daemon, poll it until RUNNING, mount the
sandbox share and each container's RAFS image through the HTTP API, and stop it. Everything
a runtime does differently is a field of `Runtime`, so the test reads as one sequence.

The values a Kata user configures (daemon path, extra args, queue size, ...) come from
`configuration-vhostfs.toml` in this directory, parsed by `load_kata_config`; the replay uses
them, so the documented snippet is what gets tested.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote

HERE: Final = Path(__file__).resolve().parent
SNIPPET: Final = HERE / "configuration-vhostfs.toml"
KATA_STOP_GRACE: Final = 5.0  # Go: SIGTERM, then SIGKILL after 5 s (§3.5)
API_CALL_TIMEOUT: Final = 30.0  # both runtimes give an API call 30 s (§3.1)
VIRTIO_FS_TAG: Final = "kataShared"  # fixed in both runtimes (§3.1)
GUEST_SHARE: Final = "/run/kata-containers/shared/"  # where the agent mounts the tag
RUNNING: Final = "RUNNING"


class ReplayError(AssertionError):
    """The daemon did not behave as Kata requires (an AssertionError: shown as a failure)."""


# -- the configuration snippet ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KataConfig:
    """The [hypervisor.qemu] keys of the snippet that shape how Kata drives the daemon."""

    shared_fs: str
    virtio_fs_daemon: Path
    valid_virtio_fs_daemon_paths: tuple[str, ...]
    virtio_fs_extra_args: tuple[str, ...]
    virtio_fs_cache_size: int
    virtio_fs_queue_size: int


def load_kata_config(path: Path = SNIPPET) -> KataConfig:
    """Parse the snippet; KeyError/TypeError if a key the replay needs is missing or mistyped."""
    with path.open("rb") as file:
        qemu = tomllib.load(file)["hypervisor"]["qemu"]
    config = KataConfig(
        shared_fs=qemu["shared_fs"],
        virtio_fs_daemon=Path(qemu["virtio_fs_daemon"]),
        valid_virtio_fs_daemon_paths=tuple(qemu["valid_virtio_fs_daemon_paths"]),
        virtio_fs_extra_args=tuple(qemu["virtio_fs_extra_args"]),
        virtio_fs_cache_size=qemu["virtio_fs_cache_size"],
        virtio_fs_queue_size=qemu["virtio_fs_queue_size"])
    if not all(isinstance(a, str) for a in config.virtio_fs_extra_args):
        raise TypeError("virtio_fs_extra_args must be a list of strings")
    if not isinstance(config.virtio_fs_queue_size, int):
        raise TypeError("virtio_fs_queue_size must be an integer")
    return config


def installed_daemon(config: KataConfig) -> Path:
    """The executable to run for `virtio_fs_daemon`.

    The snippet names the install location (/usr/local/bin/...); this checkout's console
    script of the same name stands in for it, so the test runs the code under test.
    """
    script = Path(sys.executable).parent / config.virtio_fs_daemon.name
    if not script.is_file():
        raise ReplayError(f"{script} missing: pip install -e . in the venv provides it")
    return script


# -- the two runtimes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Runtime:
    """What differs between the Go runtime and runtime-rs (§3.1-3.5), QEMU hypervisor."""

    name: str
    hybrid_mode: bool  # runtime-rs passes --hybrid-mode; Go stopped in 2023
    log_level: str  # Go: info (debug with enable_debug); rs: always info
    vhost_socket: str  # file name of --sock in the sandbox's VM dir
    share_source: str  # last component of the passthrough source dir
    shipped_extra_args: tuple[str, ...]  # Kata's default virtio_fs_extra_args (virtiofsd's)
    encode_query: bool  # runtime-rs percent-encodes the mountpoint query value
    share_options: tuple[str, ...]  # guest mount options of the kataShared storage
    dirs_before_rafs: bool  # rs creates rootfs/snapshotdir before POSTing the RAFS mount
    merged_output: bool  # Go reads stderr and stdout from one pipe
    stop_signal: signal.Signals

    def argv(self, daemon: Path, apisock: Path, sock: Path, extra: Sequence[str]) -> list[str]:
        """The command line each runtime execs (§3.2 step 3); `extra` is virtio_fs_extra_args."""
        argv = [str(daemon), "virtiofs"]
        if self.hybrid_mode:
            argv.append("--hybrid-mode")
        return [*argv, "--log-level", self.log_level, "--apisock", str(apisock),
                "--sock", str(sock), *extra]

    def mount_target(self, mountpoint: str) -> str:
        """The request target of /api/v1/mount for `mountpoint` (§0 item 8)."""
        value = quote(mountpoint, safe="") if self.encode_query else mountpoint
        return f"/api/v1/mount?mountpoint={value}"


GO: Final = Runtime(
    name="go", hybrid_mode=False, log_level="info", vhost_socket="vhost-fs.sock",
    share_source="shared", shipped_extra_args=("--thread-pool-size=1", "--announce-submounts"),
    encode_query=False, share_options=(), dirs_before_rafs=False, merged_output=True,
    stop_signal=signal.SIGTERM)
RUNTIME_RS: Final = Runtime(
    name="runtime-rs", hybrid_mode=True, log_level="info", vhost_socket="virtiofsd.sock",
    share_source="rw", shipped_extra_args=("--thread-pool-size=1", "-o", "announce_submounts"),
    encode_query=True, share_options=("nodev",), dirs_before_rafs=True, merged_output=False,
    stop_signal=signal.SIGKILL)
RUNTIMES: Final = (GO, RUNTIME_RS)


# -- the HTTP API as the runtimes call it ---------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def call(apisock: Path, method: str, target: str, body: bytes | None = None,
         timeout: float = API_CALL_TIMEOUT) -> Reply:
    """One request on a fresh connection (both runtimes build a client per call).

    The target is sent exactly as given: http.client does not re-encode it, which matters
    for the raw vs percent-encoded mountpoint query.
    """
    conn = _UnixConnection(apisock, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.read())
    finally:
        conn.close()


def mount_body(fs_type: str, source: str, config: str) -> bytes:
    """MountRequest as Go's json.Marshal / serde_json write it: this field order, compact."""
    return json.dumps({"fs_type": fs_type, "source": source, "config": config},
                      separators=(",", ":")).encode()


# -- the daemon process -------------------------------------------------------------------


@dataclass(eq=False)
class Daemon:
    """The daemon as a runtime holds it: the child, its output pipe(s) and the two sockets.

    Output is read by one thread per pipe, as the runtimes' log goroutine/task does; `eof`
    is set when every pipe has ended, which the Go runtime takes as "nydusd died".
    """

    runtime: Runtime
    proc: subprocess.Popen[bytes]
    apisock: Path
    sock: Path
    log_path: Path
    lines: list[str] = field(default_factory=list)
    eof: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def spawn(cls, runtime: Runtime, argv: Sequence[str], apisock: Path, sock: Path,
              log_path: Path) -> Daemon:
        stderr = subprocess.STDOUT if runtime.merged_output else subprocess.PIPE
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=stderr, start_new_session=True)
        daemon = cls(runtime, proc, apisock, sock, log_path)
        pipes = [p for p in (proc.stdout, proc.stderr) if p is not None]
        done = threading.Barrier(len(pipes), action=daemon.eof.set)
        lock = threading.Lock()
        for pipe in pipes:
            threading.Thread(target=daemon._drain, args=(pipe, lock, done), daemon=True).start()
        return daemon

    def _drain(self, pipe: object, lock: threading.Lock, done: threading.Barrier) -> None:
        assert hasattr(pipe, "readline")
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with lock:
                    self.lines.append(line)
                log.write(line + "\n")
                log.flush()
        done.wait()

    def output(self) -> str:
        return "\n".join(self.lines)

    def pause(self, seconds: float) -> None:
        """Wait between readiness probes by waiting on the child (notices an early exit)."""
        try:
            status = self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return
        raise ReplayError(f"daemon exited with status {status} while Kata waited for it\n"
                          f"{self.output()}")

    def kill(self) -> None:
        """Last-resort cleanup of a test that failed half-way."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# -- readiness (§3.2 step 4) ----------------------------------------------------------------

GO_ATTEMPTS: Final = 20
GO_FIRST_DELAY: Final = 0.020  # retry-go: BackOffDelay from 20 ms plus RandomDelay
GO_MAX_JITTER: Final = 0.100  # retry-go's default MaxJitter
GO_STAT_ATTEMPTS: Final = 3  # the client first checks the socket file exists...
GO_STAT_DELAY: Final = 0.100  # ...with 100 ms between attempts
GO_DEADLINE: Final = 30.0  # ours: Go's 20 doubling delays could add up to hours
RS_ATTEMPTS: Final = 100
RS_INTERVAL: Final = 0.100
RS_PROBE_TIMEOUT: Final = 1.0
RS_DEADLINE: Final = 10.0
VERSION_KEYS: Final = ("package_ver", "git_commit", "build_time", "profile", "rustc")


def _daemon_info(daemon: Daemon, timeout: float) -> dict[str, object]:
    reply = call(daemon.apisock, "GET", "/api/v1/daemon", timeout=timeout)
    if reply.status != 200:
        raise ReplayError(f"GET /api/v1/daemon: {reply.status} {reply.body!r}")
    info = reply.json()
    if not isinstance(info, dict):
        raise ReplayError(f"DaemonInfo is not an object: {reply.body!r}")
    return info


def _go_probe(daemon: Daemon) -> bool:
    for attempt in range(GO_STAT_ATTEMPTS):
        if daemon.apisock.exists():
            break
        if attempt + 1 == GO_STAT_ATTEMPTS:
            return False
        daemon.pause(GO_STAT_DELAY)
    return _daemon_info(daemon, API_CALL_TIMEOUT).get("state") == RUNNING


def _rs_probe(daemon: Daemon) -> bool:
    info = _daemon_info(daemon, RS_PROBE_TIMEOUT)
    version = info.get("version")
    # runtime-rs deserializes DaemonInfo strictly: no version or a missing string = not ready
    if not isinstance(version, dict) or not all(
            isinstance(version.get(key), str) for key in VERSION_KEYS):
        raise ReplayError(f"runtime-rs cannot parse this DaemonInfo: {info!r}")
    return info.get("state") == RUNNING


def wait_until_running(daemon: Daemon, rng: random.Random | None = None) -> int:
    """Poll as the daemon's runtime does; returns the number of probes it took.

    A probe that cannot connect counts as "not ready yet", like a refused dial in Go or a
    failed hyper request in runtime-rs. Raises ReplayError when the runtime would give up.
    """
    rng = rng or random.Random(0)
    go = daemon.runtime is GO
    attempts, deadline = (GO_ATTEMPTS, GO_DEADLINE) if go else (RS_ATTEMPTS, RS_DEADLINE)
    probe: Callable[[Daemon], bool] = _go_probe if go else _rs_probe
    end = time.monotonic() + deadline
    last: object = None
    for attempt in range(attempts):
        try:
            if probe(daemon):
                return attempt + 1
        except OSError as exc:  # ECONNREFUSED, ENOENT, timeouts
            last = exc
        delay = (GO_FIRST_DELAY * 2 ** attempt + rng.uniform(0, GO_MAX_JITTER) if go
                 else RS_INTERVAL)
        if time.monotonic() + delay > end:
            break
        daemon.pause(delay)
    raise ReplayError(f"{daemon.runtime.name}: daemon not RUNNING after {attempt + 1} probes"
                      f" (last error {last!r})\n{daemon.output()}")


# -- container storage (§3.3, §3.6) -------------------------------------------------------


def rafs_config(snapshot_id: str, blobs: Path, cache: Path) -> str:
    """The configuration string nydus-snapshotter builds for one image (§3.6 shape).

    localfs backend instead of a registry (no network here); everything else as the
    snapshotter's template fills it in: device.id "/<snapshot id>", blobcache in the shared
    cache dir, direct mode, xattrs, whole-image prefetch.
    """
    return json.dumps({
        "device": {
            "id": f"/{snapshot_id}",
            "backend": {"type": "localfs", "config": {"dir": str(blobs)}},
            "cache": {"type": "blobcache",
                      "config": {"work_dir": str(cache), "disable_indexed_map": False}},
        },
        "mode": "direct",
        "digest_validate": False,
        "enable_xattr": True,
        "fs_prefetch": {"enable": True, "prefetch_all": True, "threads_count": 8,
                        "merging_size": 1048576},
    })


def rafs_mountpoint(cid: str) -> str:
    return f"/rafs/{cid}/lowerdir"


def overlay_options(cid: str) -> str:
    """The agent's overlay storage options for a nydus rootfs, in Kata's order (§3.3 step 3)."""
    container = f"{GUEST_SHARE}containers/{cid}"
    return ",".join([f"upperdir={container}/snapshotdir/fs",
                     f"workdir={container}/snapshotdir/work",
                     f"lowerdir={GUEST_SHARE}rafs/{cid}/lowerdir", "index=off"])


def guest_rootfs(cid: str) -> str:
    return f"{GUEST_SHARE}containers/{cid}/rootfs"


def make_container_dirs(share: Path, cid: str) -> Path:
    """Host side of §3.3: <share>/<cid>/rootfs and the snapshot dir with fs/ and work/.

    Kata bind-mounts the snapshotter's snapshot dir at <share>/<cid>/snapshotdir; a plain
    directory with the same two subdirectories stands in for it (the daemon cannot tell).
    Returns the snapshot dir.
    """
    (share / cid / "rootfs").mkdir(parents=True)
    snapshot = share / cid / "snapshotdir"
    for sub in ("fs", "work"):
        (snapshot / sub).mkdir(parents=True)
    return snapshot
