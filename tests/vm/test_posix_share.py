"""POSIX conformance of our writable share, as a guest sees it: the posixfs suite.

``hack/vm/guest/posixfs`` (built into the guest as ``/bin/posixfs``) runs a table of cases,
each a few syscalls with their expected results and errnos, against a directory and prints
``ok N name`` / ``not ok N name: expected X, got Y (...)`` and ``P passed, F failed``.
Here it runs in a QEMU guest on a virtio-fs mount served READ-WRITE by
tests/support/writable_daemon.py over a host ext4 directory, and the set of failing cases
must equal :data:`KNOWN_FAILURES` exactly: a newly broken case fails the test, and so does a
known failure that starts passing (then drop it from the list and from the docs).

The suite itself is checked first on a host directory, where every case must pass, so a
failure in the guest is about the share, not about the suite's expectations.
docs/posix-conformance.md has the method, the results for vhostfs and for the C virtiofsd,
and the reason behind every known failure.
"""

from __future__ import annotations

import re
import subprocess
from functools import partial
from pathlib import Path

import pytest

from hack.vm import initramfs
from tests.support import vm, writable_daemon
from tests.vm.conftest import StartShare

#: Known failures over our share (both cache modes), case name -> reason; see the docs.
#: None since FUSE_TMPFILE is served and LISTXATTR hides trusted.* from non-root callers.
KNOWN_FAILURES: dict[str, str] = {}

#: Extra known failures with the guest's writeback cache on (same with the C virtiofsd at
#: cache=auto): the guest keeps cached attributes, st_blocks included, across its own
#: writes and fsync until the attribute timeout runs out.
WRITEBACK_FAILURES: dict[str, str] = {
    "rw/blocks_after_fsync": "st_blocks stays at the cached 0 after write + fsync",
    "fallocate/punch_hole": "st_blocks before the punch is the stale cached 0",
}

_LINE = re.compile(r"^(ok|not ok) (\d+) (\S+?)(?:: (.*))?$")
_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")


def parse_report(text: str) -> tuple[list[str], dict[str, str]]:
    """Case names in run order and the failing ones with their messages; checks the framing."""
    names: list[str] = []
    failed: dict[str, str] = {}
    lines = text.splitlines()
    summary = next((m for line in lines if (m := _SUMMARY.match(line))), None)
    assert summary is not None, f"no summary line in:\n{text}"
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        status, number, name, message = m.groups()
        assert int(number) == len(names) + 1, line
        names.append(name)
        if status == "not ok":
            failed[name] = message or ""
    assert (int(summary.group(1)), int(summary.group(2))) == (len(names) - len(failed),
                                                             len(failed))  # fmt: skip
    return names, failed


def list_cases(image: initramfs.GuestImage) -> list[str]:
    proc = subprocess.run([image.posixfs, "-l"], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_suite_passes_on_a_host_directory(
    guest_image: initramfs.GuestImage, tmp_path: Path
) -> None:
    # no VM: the suite's expectations hold on a local file system (ext4 or tmpfs), as root
    proc = subprocess.run([guest_image.posixfs, str(tmp_path)], capture_output=True, text=True,
                          check=False, timeout=300)  # fmt: skip
    names, failed = parse_report(proc.stdout)

    assert failed == {}
    assert proc.returncode == 0
    assert names == list_cases(guest_image)
    assert list(tmp_path.iterdir()) == []  # the suite removed everything it made


@pytest.mark.vm
@pytest.mark.parametrize("writeback", [False, True], ids=["write-through", "writeback"])
def test_posix_suite_over_the_writable_share(
    start_share: StartShare, guest_image: initramfs.GuestImage, tmp_path: Path, writeback: bool
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)  # the permission cases run as other uids below it
    share = start_share(shared, command=partial(writable_daemon.command, writeback=writeback))
    script = "mount -t virtiofs share /mnt\nposixfs /mnt || echo \"posixfs status $?\"\n"

    result = vm.run_guest(script, fs_devices=[share], timeout=240).check()

    names, failed = parse_report(result.text)
    assert names == list_cases(guest_image), result.explain()
    known = KNOWN_FAILURES | (WRITEBACK_FAILURES if writeback else {})
    assert set(failed) == set(known), "\n".join(f"{n}: {m}" for n, m in failed.items())
    assert ("posixfs status 1" in result.text) == bool(failed)
    assert list(shared.iterdir()) == []  # cleanup through the share removed everything
