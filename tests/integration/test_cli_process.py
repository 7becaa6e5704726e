"""The daemon as Kata starts it: a real process, its exit codes, sockets and signals.

Waiting for the API socket of a child process has no event to wait on, so those waits poll
the file system with a bounded deadline; everything after that is request/response.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.frontend import Frontend, FrontendOptions

DEADLINE = 20.0  # seconds a child gets to start (the machine is shared)
KATA_STOP_GRACE = 5.0  # the Go runtime SIGKILLs 5 s after SIGTERM


def nydusd_command() -> list[str]:
    """The console script Kata's virtio_fs_daemon points at (or the same entry point)."""
    script = Path(sys.executable).parent / "vhostfs-nydusd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from vhostfs.cli import nydusd_main; "
            "sys.exit(nydusd_main())"]


def wait_for_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        try:
            # Wait on the process itself (no event tells us the file appeared): a daemon
            # that dies at startup ends the wait at once.
            proc.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(proc.communicate()[1].decode())


def client(apisock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(apisock)),
                        base_url="http://localhost", timeout=10)


def is_listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


@pytest.fixture
def run(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start(procs: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*nydusd_command(), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    procs.append(proc)
    return proc


@pytest.mark.parametrize("runtime", ["go", "runtime-rs"])
def test_kata_start_mount_sigterm(tmp_path: Path, run: list[subprocess.Popen[bytes]],
                                  runtime: str) -> None:
    api, vhost, share = tmp_path / "nydusd-api.sock", tmp_path / "vhost-fs.sock", tmp_path / "s"
    share.mkdir()
    if runtime == "go":  # nydusd.go, with Kata's shipped virtio_fs_extra_args
        argv = ["virtiofs", "--log-level", "debug", "--apisock", str(api), "--sock", str(vhost),
                "--thread-pool-size=1", "--announce-submounts"]
    else:
        argv = ["virtiofs", "--hybrid-mode", "--log-level", "info", "--apisock", str(api),
                "--sock", str(vhost), "--thread-pool-size=1", "-o", "announce_submounts"]
    proc = start(run, *argv)
    wait_for_socket(api, proc)
    assert is_listening(vhost)  # bound before the API socket appeared
    with client(api) as http:
        info = http.get("/api/v1/daemon")
        assert info.status_code == 200
        assert info.json()["state"] == "RUNNING"  # the first answer is already RUNNING
        mounted = http.post("/api/v1/mount", params={"mountpoint": "/containers"},
                            content=json.dumps({"fs_type": "passthrough_fs",
                                                "source": str(share), "config": ""}))
        assert mounted.status_code == 204
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=KATA_STOP_GRACE) == 0
    assert time.monotonic() - started < KATA_STOP_GRACE
    assert not api.exists()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "ignoring virtiofsd option" in err
    assert "SIGTERM received" in err


def test_api_exit(tmp_path: Path, run: list[subprocess.Popen[bytes]]) -> None:
    api = tmp_path / "api.sock"
    proc = start(run, "virtiofs", "--apisock", str(api), "--sock", str(tmp_path / "v.sock"))
    wait_for_socket(api, proc)
    with client(api) as http:
        assert http.put("/api/v1/daemon/exit").status_code == 204
    assert proc.wait(timeout=KATA_STOP_GRACE) == 0
    assert not api.exists()


def test_daemon_survives_the_vmm_with_an_api(tmp_path: Path,
                                             run: list[subprocess.Popen[bytes]]) -> None:
    api, vhost = tmp_path / "api.sock", tmp_path / "v.sock"
    proc = start(run, "virtiofs", "--apisock", str(api), "--sock", str(vhost))
    wait_for_socket(api, proc)
    with Frontend.connect(str(vhost), FrontendOptions()):
        pass  # the VMM connects and goes away
    with client(api) as http:
        assert http.get("/api/v1/daemon").json()["state"] == "RUNNING"
    assert proc.poll() is None
    with Frontend.connect(str(vhost), FrontendOptions()):
        pass  # and a new one is accepted
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=KATA_STOP_GRACE) == 0


def test_without_api_exits_when_the_frontend_leaves(tmp_path: Path,
                                                    run: list[subprocess.Popen[bytes]]) -> None:
    vhost, share = tmp_path / "v.sock", tmp_path / "share"
    share.mkdir()
    proc = start(run, "virtiofs", "--sock", str(vhost), "--shared-dir", str(share))
    wait_for_socket(vhost, proc)
    with Frontend.connect(str(vhost), FrontendOptions()):
        pass
    assert proc.wait(timeout=DEADLINE) == 0


def test_usage_error_creates_no_socket(tmp_path: Path,
                                       run: list[subprocess.Popen[bytes]]) -> None:
    api, vhost = tmp_path / "api.sock", tmp_path / "v.sock"
    proc = start(run, "virtiofs", "--apisock", str(api), "--sock", str(vhost), "--threads", "4")
    assert proc.wait(timeout=DEADLINE) == 2
    assert b"unrecognized arguments: --threads 4" in (proc.stderr.read() if proc.stderr else b"")
    assert not api.exists() and not vhost.exists()


def test_startup_error_exit_1(tmp_path: Path, run: list[subprocess.Popen[bytes]]) -> None:
    api, vhost = tmp_path / "api.sock", tmp_path / "v.sock"
    proc = start(run, "virtiofs", "--apisock", str(api), "--sock", str(vhost),
                 "--shared-dir", str(tmp_path / "missing"))
    assert proc.wait(timeout=DEADLINE) == 1
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert err.splitlines()[-1].startswith("Error: ")
    assert not api.exists()


def test_version(run: list[subprocess.Popen[bytes]]) -> None:
    proc = start(run, "-V")
    out, _ = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0
    assert out.decode().startswith("Version: \tv")


def test_log_file_appends(tmp_path: Path, run: list[subprocess.Popen[bytes]]) -> None:
    api, log = tmp_path / "api.sock", tmp_path / "nydusd"
    (tmp_path / "nydusd.log").write_text("earlier line\n")
    proc = start(run, "virtiofs", "--apisock", str(api), "--sock", str(tmp_path / "v.sock"),
                 "--log-file", str(log))
    wait_for_socket(api, proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=KATA_STOP_GRACE) == 0
    text = (tmp_path / "nydusd.log").read_text()
    assert text.startswith("earlier line\n")
    assert "daemon state READY -> RUNNING" in text
