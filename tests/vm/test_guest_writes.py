"""A QEMU guest builds an overlayfs with its upper and work dirs on our writable share.

This is what Kata does with nydusd's passthrough mount (nydusd-interface.md 3.3): the guest
mounts the shared directory with virtiofs and uses a directory of it as overlayfs upperdir
and workdir over a lower layer (here a tmpfs in the guest). The guest writes, deletes and
renames in the merged view; afterwards the host must find the upper dir overlayfs
documents: new and copied-up files, whiteouts (char devices 0:0) for deletions, an opaque
directory (trusted.overlay.opaque=y), and ownership as the guest set it.

The daemon is tests/support/writable_daemon.py (the product CLI still exports read-only).
"""

from __future__ import annotations

import os
import stat
from functools import partial
from pathlib import Path

import pytest

from tests.support import vm, writable_daemon
from tests.vm.conftest import StartShare

pytestmark = pytest.mark.vm

OVERLAY_SCRIPT = r"""
mount -t virtiofs share /mnt
mkdir -p /lower /merged
mount -t tmpfs lower /lower
mkdir /lower/dir /lower/kept_dir
for f in keep del ren; do echo lower > /lower/$f; done
echo a > /lower/dir/a
echo b > /lower/kept_dir/b
mkdir /mnt/up /mnt/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/mnt/up,workdir=/mnt/work,index=off /merged
echo new > /merged/new
chown 1000:1001 /merged/new
echo changed >> /merged/keep
rm /merged/del
mv /merged/ren /merged/renamed
rm -r /merged/dir
mkdir /merged/dir
echo c > /merged/dir/c
ln -s ../escape/anywhere /merged/sym
ln /merged/new /merged/hard
mkdir /merged/newdir
mkfifo /merged/newdir/fifo
dd if=/dev/zero of=/merged/big bs=64k count=32 2>/dev/null
truncate -s 1000 /merged/big
rm /merged/kept_dir/b
sync
echo "merged: $(ls /merged | tr '\n' ' ')"
echo "dir: $(ls /merged/dir | tr '\n' ' ')"
cat /merged/keep /merged/renamed
umount /merged
# A second mount of the same upper dir sees what the first one left.
mount -t overlay overlay -o lowerdir=/lower,upperdir=/mnt/up,workdir=/mnt/work,index=off /merged
echo "again: $(ls /merged | tr '\n' ' ')"
echo "again dir: $(ls /merged/dir | tr '\n' ' ')"
umount /merged
umount /mnt
"""


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@pytest.mark.parametrize("writeback", [False, True], ids=["write-through", "writeback"])
def test_overlay_upper_on_the_share(
    start_share: StartShare, tmp_path: Path, writeback: bool
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    command = partial(writable_daemon.command, writeback=writeback)
    share = start_share(shared, command=command)
    result = vm.run_guest(OVERLAY_SCRIPT, fs_devices=[share], timeout=240).check()
    lines = result.text.splitlines()
    merged = "big dir hard keep kept_dir new newdir renamed sym "
    assert lines == [
        f"merged: {merged}",
        "dir: c ",
        "lower",
        "changed",
        "lower",
        f"again: {merged}",
        "again dir: c ",
    ], result.explain()

    up = shared / "up"
    expected = {"new", "keep", "del", "ren", "renamed", "dir", "sym", "hard", "newdir", "big",
                "kept_dir"}  # fmt: skip
    assert {p.name for p in up.iterdir()} == expected
    assert (up / "new").read_bytes() == b"new\n"
    new = os.lstat(up / "new")
    assert (new.st_uid, new.st_gid, new.st_nlink) == (1000, 1001, 2)
    assert os.lstat(up / "hard").st_ino == new.st_ino
    assert (up / "keep").read_bytes() == b"lower\nchanged\n"
    assert (up / "renamed").read_bytes() == b"lower\n"
    assert is_whiteout(up / "del") and is_whiteout(up / "ren")
    assert is_whiteout(up / "kept_dir" / "b")
    assert os.getxattr(up / "dir", "trusted.overlay.opaque") == b"y"
    assert sorted(p.name for p in (up / "dir").iterdir()) == ["c"]
    assert (up / "dir" / "c").read_bytes() == b"c\n"
    assert os.readlink(up / "sym") == "../escape/anywhere"
    assert not (shared / "escape").exists()
    assert stat.S_ISFIFO(os.lstat(up / "newdir" / "fifo").st_mode)
    assert os.stat(up / "big").st_size == 1000
    assert (shared / "work").is_dir()
