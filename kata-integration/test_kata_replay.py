"""Kata Containers drives vhostfs-nydusd as it drives nydusd: both runtimes, one QEMU boot each.

The host side replays the runtime (kata_runtime.py, values from configuration-vhostfs.toml):
its argv with Kata's shipped virtiofsd extra args, its readiness polling, the sandbox share
mount, QEMU with `vhost-user-fs-pci` tag kataShared and shared memfd RAM, then per container
the RAFS mount with a snapshotter-shaped config. The guest side does what the agent does:
mounts the share at /run/kata-containers/shared/ (`nodev` for runtime-rs), mounts each
container's overlay exactly as Kata's storage says, and runs programs from the image inside
it (chroot: the image's busybox). A control serial port (vm.ControlChannel) interleaves the
two during one boot, so the host checks the upper dirs and the API state between steps.

Two containers from two images (RAFS v6 and v5) run side by side; container 1 stops (guest
unmounts its overlay, host DELETEs its RAFS mount) while container 2 keeps a process running
from its image and afterwards still reads the image and writes. Then container 2 stops, the
VMM stops (the guest powers off), and the daemon is stopped the runtime's way: SIGTERM with
5 s grace (Go), SIGKILL (runtime-rs).

Stand-ins, because a test has no containerd: the snapshot dir is a plain directory with fs/
and work/ (Kata bind-mounts the snapshotter's), Go's read-only `shared` view of `mounts` is
the one directory, and the images come from a localfs backend instead of a registry.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from kata_runtime import (
    GO,
    GUEST_SHARE,
    KATA_STOP_GRACE,
    RUNTIMES,
    VIRTIO_FS_TAG,
    Daemon,
    KataConfig,
    Runtime,
    call,
    guest_rootfs,
    installed_daemon,
    load_kata_config,
    make_container_dirs,
    mount_body,
    overlay_options,
    rafs_config,
    rafs_mountpoint,
    wait_until_running,
)

from tests.support import vm

BUSYBOX: Final = Path("/bin/busybox")  # static: runs in the guest from the image
APPLETS: Final = ("sh", "cat", "echo", "rm", "wc", "sleep", "sha256sum", "cut")
HELLO: Final = """#!/bin/sh
echo "hello from $(cat /etc/image-name), busybox with $(busybox --list | wc -l) applets"
"""
BOOT_TIMEOUT: Final = 90.0  # QEMU start to the guest's first line (TCG, shared machine)
STEP_TIMEOUT: Final = 60.0  # one guest step
GUEST_TIMEOUT: Final = 240.0  # the whole guest run; the harness kills QEMU after it
ABORT_GRACE: Final = 10.0  # for a guest told to abort to reach its next ctl_ask
C1: Final = hashlib.sha256(b"container-1").hexdigest()  # container ids look like Kata's
C2: Final = hashlib.sha256(b"container-2").hexdigest()


# -- images ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Image:
    name: str
    bootstrap: Path  # where nydus-snapshotter keeps it: snapshots/<id>/fs/image/image.boot
    snapshot_id: str


@dataclass(frozen=True, slots=True)
class Images:
    blobs: Path  # one blob directory for all images, as a registry cache would be
    alpha: Image  # RAFS v6, zstd
    beta: Image  # RAFS v5, lz4


def make_rootfs(root: Path, name: str) -> None:
    """A tiny busybox root filesystem whose /bin/hello names the image."""
    for d in ("bin", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "bin" / "hello").write_text(HELLO)
    (root / "bin" / "hello").chmod(0o755)
    (root / "etc" / "image-name").write_text(f"{name}\n")
    (root / "etc" / "motd").write_text(f"welcome to {name}\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    base = tmp_path_factory.mktemp("images")
    built = []
    for snapshot_id, (name, flags) in enumerate(
            [("alpha", []), ("beta", ["--version", "5", "--compressor", "lz4_block"])], 1):
        make_rootfs(base / "src" / name, name)
        bootstrap = base / "snapshots" / str(snapshot_id) / "fs" / "image" / "image.boot"
        subprocess.run([sys.executable, "-m", "rafs", "build", str(base / "src" / name),
                        "-o", str(base), "--bootstrap", str(bootstrap), "-q", *flags],
                       check=True, capture_output=True)
        built.append(Image(name, bootstrap, str(snapshot_id)))
    return Images(base / "blobs", *built)


@pytest.fixture(scope="module")
def guest_ready() -> None:
    """Fail (not skip) early without the VM prerequisites, as tests/vm does."""
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (vhost-user memfd sharing)")
    try:
        vm.guest_image()
    except vm.GuestError as e:
        pytest.fail(f"{e}")


def applet_count() -> int:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, check=True, text=True)
    return len(out.stdout.split())


# -- the sandbox on the host ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sandbox:
    """Kata's per-sandbox host paths (§3.1) under a short temporary root (sun_path limit)."""

    runtime: Runtime
    root: Path
    sid: str = "0f1e2d3c4b5a6978"

    @property
    def vm_dir(self) -> Path:
        if self.runtime is GO:
            return self.root / "run" / "vc" / "vm" / self.sid
        return self.root / "run" / "kata" / self.sid / "root"

    @property
    def apisock(self) -> Path:
        return self.vm_dir / "nydusd-api.sock"

    @property
    def sock(self) -> Path:
        return self.vm_dir / self.runtime.vhost_socket

    @property
    def share(self) -> Path:
        """The passthrough source: .../sandboxes/<sid>/shared (Go) or .../rw (runtime-rs)."""
        return (self.root / "run" / "kata-containers" / "shared" / "sandboxes" / self.sid
                / self.runtime.share_source)

    @property
    def cache(self) -> Path:
        return self.root / "var" / "lib" / "containerd-nydus" / "cache"


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    runtime: Runtime = request.param
    root = Path(tempfile.mkdtemp(prefix="kata-", dir="/tmp"))
    box = Sandbox(runtime, root)
    for d in (box.vm_dir, box.share, box.cache):
        d.mkdir(parents=True)
    yield box
    shutil.rmtree(root, ignore_errors=True)


def runtime_params() -> list[object]:
    return [pytest.param(r, id=r.name) for r in RUNTIMES]


@contextmanager
def started_daemon(box: Sandbox, config: KataConfig, log: Path) -> Iterator[Daemon]:
    """Exec the daemon as the runtime does and wait until it is RUNNING (§3.2 steps 3-4).

    Kata appends virtio_fs_extra_args verbatim; the replay passes the snippet's list and then
    the runtime's shipped virtiofsd defaults, which users who change only shared_fs keep: the
    daemon must start anyway and just warn about them.
    """
    extra = [*config.virtio_fs_extra_args, *box.runtime.shipped_extra_args]
    argv = box.runtime.argv(installed_daemon(config), box.apisock, box.sock, extra)
    daemon = Daemon.spawn(box.runtime, argv, box.apisock, box.sock, log)
    try:
        wait_until_running(daemon)
        # Kata starts the VMM right after RUNNING: the vhost-user socket must be there
        assert box.sock.is_socket(), daemon.output()
        yield daemon
    finally:
        daemon.kill()


def mount_share(box: Sandbox) -> None:
    """§3.2 step 5: the sandbox share at /containers; exactly 204 or Kata gives up."""
    reply = call(box.apisock, "POST", box.runtime.mount_target("/containers"),
                 mount_body("passthrough_fs", str(box.share), ""))
    assert reply.status == 204, reply


def create_container(box: Sandbox, images: Images, cid: str, image: Image) -> Path:
    """§3.3 steps 1-2 in the runtime's order; returns the container's snapshot dir."""
    config = rafs_config(image.snapshot_id, images.blobs, box.cache)
    if box.runtime.dirs_before_rafs:
        make_container_dirs(box.share, cid)
    reply = call(box.apisock, "POST", box.runtime.mount_target(rafs_mountpoint(cid)),
                 mount_body("rafs", str(image.bootstrap), config))
    assert reply.status == 204, reply
    if not box.runtime.dirs_before_rafs:
        make_container_dirs(box.share, cid)
    return box.share / cid / "snapshotdir"


def remove_container(box: Sandbox, cid: str) -> None:
    """§3.4: DELETE the RAFS mount; Go also removes the rootfs dir (the unbind is moot)."""
    reply = call(box.apisock, "DELETE", box.runtime.mount_target(rafs_mountpoint(cid)))
    assert reply.status == 204, reply
    if box.runtime is GO:
        (box.share / cid / "rootfs").rmdir()


def backends(box: Sandbox) -> dict[str, str]:
    """mountpoint -> backend_type from GET /api/v1/daemon."""
    reply = call(box.apisock, "GET", "/api/v1/daemon")
    assert reply.status == 200, reply
    info = reply.json()
    assert isinstance(info, dict)
    assert info["state"] == "RUNNING"
    collection = info["backend_collection"]
    assert isinstance(collection, dict)
    return {key: value["backend_type"] for key, value in collection.items()}


def rafs_backends(*cids: str) -> dict[str, str]:
    return {"/containers": "PassthroughFs", **{rafs_mountpoint(c): "Rafs" for c in cids}}


# -- the guest ----------------------------------------------------------------------------------


def guest_prologue(runtime: Runtime) -> str:
    """The control port helpers, the agent's share mount and its overlay storage handler."""
    options = f"-o {','.join(runtime.share_options)} " if runtime.share_options else ""
    return vm.CONTROL_SCRIPT + f"""\
SHARED={GUEST_SHARE}
mkdir -p "$SHARED"
mount -t virtiofs {options}{VIRTIO_FS_TAG} "$SHARED"
# the agent's storage {{driver: overlayfs, fstype: overlay, source: overlay}} (3.3 step 3)
start_container() {{
	mount -t overlay overlay -o "$2" "$SHARED/containers/$1/rootfs"
}}
# a process of the container: the image's /bin/sh, rooted in the container's rootfs
in_container() {{
	root=$SHARED/containers/$1/rootfs
	shift
	chroot "$root" /bin/sh -c "$*"
}}
# a long-running process of container $1 (sleep from the image); returns once the image's
# sh runs in it (a fifo, not a delay), leaving its pid in $sleeper
start_sleeper() {{
	mkfifo /run/started
	chroot "$SHARED/containers/$1/rootfs" /bin/sh -c 'echo up; exec /bin/sleep 600' \
		> /run/started &
	sleeper=$!
	read -r _ < /run/started
	rm /run/started
}}
ctl_ask "sandbox-ready $(grep " ${{SHARED%/}} virtiofs " /proc/mounts | cut -d' ' -f4)"
"""


def replay_script(runtime: Runtime) -> str:
    return guest_prologue(runtime) + f"""\
# containers are created one at a time: the host mounts an image, then the agent its overlay
start_container {C1} {shlex.quote(overlay_options(C1))}
in_container {C1} '/bin/hello > /hello.txt && rm /etc/motd'
sync
ctl_ask c1-running
start_container {C2} {shlex.quote(overlay_options(C2))}
in_container {C2} '/bin/hello > /hello.txt'
start_sleeper {C2}
sync
ctl_ask "c2-running $(readlink /proc/$sleeper/exe)"
# container 1 stops: its processes are gone, the agent unmounts its storage
umount "$SHARED/containers/{C1}/rootfs"
ctl_ask c1-stopped
# the image is gone from the share at once (the daemon's pseudo directories are never
# cached by the guest; Kata does not depend on it)
[ ! -e "$SHARED/rafs/{C1}/lowerdir" ]
# container 2 still runs, reads its image and writes (an exec into it)
kill -0 $sleeper
in_container {C2} 'echo "$(cat /etc/image-name) $(sha256sum /bin/busybox | cut -d" " -f1)" \
> /after.txt'
sync
ctl_ask c2-exec-done
kill $sleeper
wait $sleeper || true
umount "$SHARED/containers/{C2}/rootfs"
ctl_ask c2-stopped
# returning powers the guest off: the VMM stops while the daemon still runs, as in Kata
"""


@contextmanager
def guest_session(runtime: Runtime, script: str, box: Sandbox, config: KataConfig,
                  log: Path) -> Iterator[tuple[vm.ControlChannel, Future[vm.GuestResult]]]:
    """Boot QEMU in a thread (§3.2 step 6) and yield the control channel and the result.

    If the host side fails, the guest is told to abort (or QEMU is stopped) so the failure
    comes at once, with the guest's output attached, not at the guest's deadline.
    """
    device = vm.VirtioFsDevice(socket_path=box.sock, tag=VIRTIO_FS_TAG,
                               queue_size=config.virtio_fs_queue_size, log_path=log)
    with vm.ControlChannel(box.vm_dir / "ctl.sock") as channel, \
            ThreadPoolExecutor(max_workers=1) as pool:
        guest = pool.submit(vm.run_guest, script, fs_devices=[device], timeout=GUEST_TIMEOUT,
                            control_socket=channel.path)
        # a run that ends before QEMU connects (QEMU or the device failed) ends the wait
        guest.add_done_callback(lambda _: channel.cancel_accept())
        try:
            channel.accept(BOOT_TIMEOUT)
            yield channel, guest
        except BaseException as exc:
            _abort(channel, guest, exc)
            raise


def _abort(channel: vm.ControlChannel, guest: Future[vm.GuestResult],
           exc: BaseException) -> None:
    """End the guest after a host-side failure and attach what it said to `exc`."""
    try:
        channel.send("abort")  # the guest exits at its next ctl_ask, with its output
        guest.exception(timeout=ABORT_GRACE)
    except (OSError, vm.GuestError, TimeoutError):
        channel.stop_vmm()  # not listening (stuck, or never connected)
    try:
        exc.add_note(guest.result(timeout=STEP_TIMEOUT).explain())
    except Exception as guest_exc:  # the guest's own failure is the more useful note
        exc.add_note(f"guest: {guest_exc}")


def step(channel: vm.ControlChannel, name: str) -> str:
    """Wait for the guest to reach `name`; returns the rest of its line."""
    line = channel.receive(STEP_TIMEOUT)
    word, _, rest = line.partition(" ")
    assert word == name, f"guest said {line!r}, expected {name!r}"
    return rest


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.vm
@pytest.mark.parametrize("sandbox", runtime_params(), indirect=True)
def test_kata_replay(sandbox: Sandbox, images: Images, guest_ready: None,
                     tmp_path: Path) -> None:
    box, runtime, config = sandbox, sandbox.runtime, load_kata_config()
    log = tmp_path / "daemon.log"
    hello = f"busybox with {applet_count()} applets\n"
    busybox_sha = hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()
    with started_daemon(box, config, log) as daemon:
        mount_share(box)
        with guest_session(runtime, replay_script(runtime), box, config, log) as (ctl, guest):
            share_options = step(ctl, "sandbox-ready").split(",")
            assert ("nodev" in share_options) == ("nodev" in runtime.share_options)
            snap1 = create_container(box, images, C1, images.alpha)
            assert backends(box) == rafs_backends(C1)
            ctl.send("go")

            step(ctl, "c1-running")
            assert (snap1 / "fs" / "hello.txt").read_text() == f"hello from alpha, {hello}"
            assert is_whiteout(snap1 / "fs" / "etc" / "motd")  # deleted from the image
            # the second image is mounted while the guest uses the first
            snap2 = create_container(box, images, C2, images.beta)
            assert backends(box) == rafs_backends(C1, C2)
            ctl.send("go")

            exe = step(ctl, "c2-running")
            assert exe == f"{guest_rootfs(C2)}/bin/busybox"  # the image's, not the guest's
            assert (snap2 / "fs" / "hello.txt").read_text() == f"hello from beta, {hello}"
            assert not (snap2 / "fs" / "etc").exists()  # container 2 changed nothing there
            # both images were read through the blob cache their config string named
            blob_ids = {blob.name for blob in images.blobs.iterdir()}
            assert {f"{b}.blob.data" for b in blob_ids} <= {f.name for f in box.cache.iterdir()}
            ctl.send("go")

            step(ctl, "c1-stopped")
            remove_container(box, C1)
            assert backends(box) == rafs_backends(C2)
            ctl.send("go")

            step(ctl, "c2-exec-done")
            assert (snap2 / "fs" / "after.txt").read_text() == f"beta {busybox_sha}\n"
            ctl.send("go")

            step(ctl, "c2-stopped")
            remove_container(box, C2)
            assert backends(box) == rafs_backends()
            ctl.send("go")
            result = guest.result(timeout=STEP_TIMEOUT)
        result.check()
        # the VMM is gone; the daemon is still up and has kept its output open (§0 item 10)
        assert daemon.proc.poll() is None, daemon.output()
        assert not daemon.eof.is_set()
        stop_daemon(daemon)
    # Kata's shipped virtiofsd flags cost a warning each, nothing more
    for flag in flags_as_written(runtime.shipped_extra_args):
        assert f"ignoring virtiofsd option {flag} " in daemon.output(), daemon.output()


def flags_as_written(args: tuple[str, ...]) -> list[str]:
    """("-o", "x") -> "-o x": how the daemon's warning quotes a virtiofsd option."""
    flags: list[str] = []
    rest = iter(args)
    for arg in rest:
        flags.append(f"{arg} {next(rest)}" if arg == "-o" else arg)
    return flags


def stop_daemon(daemon: Daemon) -> None:
    """§3.5: Go sends SIGTERM and SIGKILLs after 5 s; runtime-rs SIGKILLs. Then Kata deletes
    both socket files itself."""
    started = time.monotonic()
    daemon.proc.send_signal(daemon.runtime.stop_signal)
    try:
        status = daemon.proc.wait(timeout=KATA_STOP_GRACE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {KATA_STOP_GRACE} s after {daemon.runtime.stop_signal.name}"
                    f": Kata would SIGKILL it\n{daemon.output()}")
    if daemon.runtime is GO:
        assert status == 0, daemon.output()
        assert time.monotonic() - started < KATA_STOP_GRACE
        assert not daemon.apisock.exists()  # removed by the daemon on its way out
    else:
        assert status == -daemon.runtime.stop_signal
    assert daemon.eof.wait(STEP_TIMEOUT), "output pipes still open after the daemon exited"
    for path in (daemon.apisock, daemon.sock):
        path.unlink(missing_ok=True)


@pytest.mark.vm
@pytest.mark.parametrize("sandbox", [pytest.param(GO, id="go")], indirect=True)
def test_sigterm_with_guest_connected(sandbox: Sandbox, images: Images, guest_ready: None,
                                      tmp_path: Path) -> None:
    """SIGTERM ends the daemon within Kata's 5 s while a guest uses a container's mounts.

    Not Kata's order (it stops the VMM first), but what a stuck VMM stop or a host shutdown
    produces; the guest then cannot finish, so the host stops QEMU afterwards.
    """
    box, config = sandbox, load_kata_config()
    log = tmp_path / "daemon.log"
    script = guest_prologue(GO) + f"""\
start_container {C1} {shlex.quote(overlay_options(C1))}
in_container {C1} '/bin/hello > /hello.txt'
start_sleeper {C1}
# requests in flight when the daemon is told to stop: appends and syncs through the overlay
busy=$SHARED/containers/{C1}/rootfs/busy.log
echo x > "$busy"
while :; do echo x >> "$busy"; sync; done &
sync
ctl_ask container-running
"""
    with started_daemon(box, config, log) as daemon:
        mount_share(box)
        with guest_session(GO, script, box, config, log) as (ctl, guest):
            step(ctl, "sandbox-ready")
            snapshot = create_container(box, images, C1, images.alpha)
            ctl.send("go")
            step(ctl, "container-running")
            assert (snapshot / "fs" / "hello.txt").read_text().startswith("hello from alpha")
            assert backends(box) == rafs_backends(C1)
            assert (snapshot / "fs" / "busy.log").exists()  # the guest is busy on the share
            stop_daemon(daemon)  # the guest is connected, both mounts are active
            ctl.stop_vmm()
            result = guest.result(timeout=STEP_TIMEOUT)
        assert result.stopped_by_host, result.explain()
    assert "SIGTERM received" in daemon.output()


def test_snippet_is_what_kata_needs() -> None:
    """No VM: the snippet's values are the ones virtio-fs-nydus works with (§3.7)."""
    config = load_kata_config()
    assert config.shared_fs == "virtio-fs-nydus"
    assert config.virtio_fs_daemon.is_absolute()
    assert str(config.virtio_fs_daemon) in config.valid_virtio_fs_daemon_paths
    assert config.virtio_fs_cache_size == 0  # no DAX
    assert 0 < config.virtio_fs_queue_size <= 1024
    assert config.virtio_fs_queue_size & (config.virtio_fs_queue_size - 1) == 0


@pytest.mark.parametrize("sandbox", runtime_params(), indirect=True)
def test_snippet_argv_starts_without_warnings(sandbox: Sandbox, tmp_path: Path) -> None:
    """No VM: the runtime's exact argv with the snippet's extra args, as-is."""
    config = load_kata_config()
    argv = sandbox.runtime.argv(installed_daemon(config), sandbox.apisock, sandbox.sock,
                                config.virtio_fs_extra_args)
    daemon = Daemon.spawn(sandbox.runtime, argv, sandbox.apisock, sandbox.sock,
                          tmp_path / "daemon.log")
    try:
        wait_until_running(daemon)
        mount_share(sandbox)
        stop_daemon(daemon)
    finally:
        daemon.kill()
    assert "ignoring virtiofsd option" not in daemon.output(), daemon.output()
