"""The VM harness itself, proven against the C virtiofsd that QEMU 7.2 ships.

These tests pin the harness (boot, result framing, reboot mode) and the manifest machinery
(tree.py on the host vs vmtool in the guest), independently of our daemon, so a failure in a
daemon test can be trusted to be the daemon's.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hack.vm import initramfs
from tests.support import tree, vm
from tests.vm.conftest import StartShare


def test_vmtool_on_host_matches_python_manifest(
    guest_image: initramfs.GuestImage, test_tree: Path, test_tree_manifest: tree.Manifest
) -> None:
    # no VM: pins the C and Python manifest implementations to each other, so a guest
    # mismatch below is about what the guest sees, not about the two implementations
    out = subprocess.run([guest_image.vmtool, "manifest", test_tree], capture_output=True,
                         check=True).stdout

    assert tree.diff_manifests(test_tree_manifest, tree.parse_manifest(out)) == ""


@pytest.mark.vm
def test_guest_manifest_equals_host_manifest(
    start_share: StartShare, test_tree: Path, test_tree_manifest: tree.Manifest
) -> None:
    share = start_share(test_tree, command=vm.virtiofsd_command)
    script = "mount -t virtiofs -o ro share /mnt\n" + tree.guest_manifest_script("/mnt")

    result = vm.run_guest(script, fs_devices=[share], timeout=120).check()

    guest = tree.parse_manifest(result.stdout)
    assert tree.diff_manifests(test_tree_manifest, guest) == ""
    assert guest == test_tree_manifest
    # the manifest really covered the hard cases (guards against an empty or partial walk)
    assert guest[b"files/sparse-5g"].sampled
    assert len(guest) > tree.BIG_DIR_ENTRIES


@pytest.mark.vm
def test_script_output_is_framed_exactly(start_share: StartShare, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "greeting").write_bytes(b"hello\n")
    share = start_share(shared, command=vm.virtiofsd_command)
    # stdout without trailing newline and with marker-like text must come back byte exact
    script = (
        "mount -t virtiofs share /mnt\n"
        "cat /mnt/greeting\n"
        "printf '@@VHOSTFS-END fake 1@@\\n\\001\\377no-newline'\n"
        "echo oops >&2\n"
        "sleep 1000 &\n"  # a leftover job must not keep the guest from finishing
        "exit 7\n"
    )

    result = vm.run_guest(script, fs_devices=[share], timeout=60)

    assert result.exit_code == 7
    assert result.stdout == b"hello\n@@VHOSTFS-END fake 1@@\n\x01\xffno-newline"
    assert result.stderr == b"oops\n"
    with pytest.raises(vm.GuestError, match="guest script failed"):
        result.check()


@pytest.mark.vm
def test_reboot_keeps_the_share(start_share: StartShare, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_bytes(b"persistent\n")
    share = start_share(shared, command=vm.virtiofsd_command)
    # both boots read the share through the same QEMU and the same daemon connection
    script = 'mount -t virtiofs share /mnt\necho "boot $BOOT of $BOOTS"\ncat /mnt/file\n'

    result = vm.run_guest(script, fs_devices=[share], boots=2, timeout=120).check()

    assert [b.boot for b in result.boots] == [1, 2]
    assert [b.stdout for b in result.boots] == [
        b"boot 1 of 2\npersistent\n",
        b"boot 2 of 2\npersistent\n",
    ]


@pytest.mark.vm
def test_timeout_kills_qemu_and_reports_the_console() -> None:
    with pytest.raises(vm.GuestTimeout) as excinfo:
        vm.run_guest("echo about-to-hang >&2\nwhile :; do :; done\n", timeout=8)

    message = str(excinfo.value)
    assert "QEMU killed" in message
    assert "--- console (tail):" in message


@pytest.mark.vm
def test_control_port_round_trips_and_the_host_can_stop_the_vmm(socket_dir: Path) -> None:
    # the guest blocks on the host's replies; after its last line it waits for good and
    # only the host's stop ends the run (as when its daemon is gone)
    script = vm.CONTROL_SCRIPT + (
        'ctl_ask "hello $((6 * 7))"\n'
        'ctl_ask "got $CTL_REPLY"\n'
    )
    reply = "x" * 300 + " spaces  kept"
    with vm.ControlChannel(socket_dir / "ctl.sock") as channel, \
            ThreadPoolExecutor(max_workers=1) as pool:
        guest = pool.submit(vm.run_guest, script, timeout=60, control_socket=channel.path)
        channel.accept(timeout=30)
        channel.expect("hello 42", timeout=30)
        channel.send(reply)
        channel.expect(f"got {reply}", timeout=30)
        channel.stop_vmm()
        result = guest.result(timeout=30)

    assert result.stopped_by_host
    assert result.boots == ()  # /init never got to report
    with pytest.raises(vm.GuestError, match="stopped before it finished"):
        result.check()


def test_control_port_wait_ends_when_the_run_does(socket_dir: Path) -> None:
    # no QEMU ever starts (no daemon at the device's socket): accept must not sit out its
    # deadline
    device = vm.VirtioFsDevice(socket_path=socket_dir / "missing.sock", tag="share")
    with vm.ControlChannel(socket_dir / "ctl.sock") as channel, \
            ThreadPoolExecutor(max_workers=1) as pool:
        guest = pool.submit(vm.run_guest, "true", fs_devices=[device],
                            control_socket=channel.path)
        guest.add_done_callback(lambda _: channel.cancel_accept())
        with pytest.raises(vm.GuestError, match="run ended"):
            channel.accept(timeout=600)
        with pytest.raises(vm.GuestError, match="no daemon socket"):
            guest.result(timeout=30)
