"""Fixtures for the real-VM tests (tests/vm, marker ``vm``).

Nothing here skips: a host without QEMU, the cloud kernel, busybox-static or gcc fails with a
message saying to run ``hack/setup``.  Deselect the VM tests explicitly with ``-m "not vm"``.

Which daemon serves the shares is one switch: ``VHOSTFS_VM_DAEMON=virtiofsd`` (the C virtiofsd
QEMU 7.2 ships, the default until our daemon is complete) or ``vhostfs`` (this checkout).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import pytest

from hack.vm import initramfs
from tests.support import tree, vm

DaemonCommand = Callable[[Path, Path], list[str]]


class StartShare(Protocol):
    """Type of the ``start_share`` fixture's value."""

    def __call__(self, shared_dir: Path, tag: str = ..., command: DaemonCommand | None = ...,
                 queue_size: int = ..., num_request_queues: int = ...,
                 packed: bool = ...) -> vm.VirtioFsDevice: ...

_DAEMONS: dict[str, DaemonCommand] = {
    "virtiofsd": vm.virtiofsd_command,
    "vhostfs": vm.vhostfs_command,
}


@pytest.fixture(scope="session")
def guest_image() -> initramfs.GuestImage:
    """Fail (not skip) early if the VM prerequisites are missing; builds/caches the initramfs."""
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (vhost-user memfd sharing, mknod in the test tree)")
    for tool in (vm.QEMU, vm.VIRTIOFSD_C):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found; run hack/setup")
    try:
        return vm.guest_image()
    except vm.GuestError as e:
        pytest.fail(f"{e}")


@pytest.fixture(scope="session")
def daemon_command() -> DaemonCommand:
    """argv builder (socket, shared dir) of the daemon under test, from VHOSTFS_VM_DAEMON."""
    name = os.environ.get("VHOSTFS_VM_DAEMON", "virtiofsd")
    if name not in _DAEMONS:
        pytest.fail(f"VHOSTFS_VM_DAEMON must be one of {sorted(_DAEMONS)}, not {name!r}")
    return _DAEMONS[name]


@pytest.fixture(scope="session")
def test_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full test tree (tests/support/tree.py), shared by the session: treat as read-only."""
    return tree.make_tree(tmp_path_factory.mktemp("tree") / "root")


@pytest.fixture(scope="session")
def test_tree_manifest(test_tree: Path) -> tree.Manifest:
    return tree.host_manifest(test_tree)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for vhost-user sockets (sun_path holds only 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vfs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_share(
    guest_image: initramfs.GuestImage, socket_dir: Path, tmp_path: Path
) -> Iterator[StartShare]:
    """Start a daemon per call and return the device to pass to run_guest.

    ``start_share(shared_dir, tag="share", command=None, queue_size=1024,
    num_request_queues=1, packed=False)``; ``command`` is an argv builder (socket, dir) and
    defaults to the daemon selected by VHOSTFS_VM_DAEMON.  The daemon's log is
    ``tmp_path/<tag>.daemon.log`` (quoted by the harness on failure).  Daemons are stopped at
    teardown.
    """
    with ExitStack() as stack:
        default = _DAEMONS[os.environ.get("VHOSTFS_VM_DAEMON", "virtiofsd")]

        def start(shared_dir: Path, tag: str = "share", command: DaemonCommand | None = None,
                  queue_size: int = 1024, num_request_queues: int = 1,
                  packed: bool = False) -> vm.VirtioFsDevice:
            sock = socket_dir / f"{tag}.sock"
            argv = (command or default)(sock, shared_dir)
            log = tmp_path / f"{tag}.daemon.log"
            stack.enter_context(vm.start_daemon(argv, sock, log_path=log))
            return vm.VirtioFsDevice(socket_path=sock, tag=tag, queue_size=queue_size,
                                     num_request_queues=num_request_queues, packed=packed,
                                     log_path=log)

        yield start
