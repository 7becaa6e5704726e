"""RAFS images built by our builder, read by a real guest: through vhostfs, and by the kernel.

The source is tests/support/tree.py's tree (every file type, xattrs incl. binary and 2000-byte
values, hard links across directories, setuid/setgid/sticky modes, odd names, devices with
major/minor >= 256, a 2000-entry directory) minus its 5 GiB sparse file: the builder reads
sparse files in full, which would make a 5 GiB blob.  Images are built with ``rafs build``
(the command line users run) and ``--extended-inodes`` so v6 keeps every mtime; small chunks
make several files multi-chunk.

* vhostfs serves the image over virtio-fs; the guest's manifest (``vmtool manifest``: types,
  modes, owners, mtimes in ns, sizes, nlink, rdev, symlink targets, xattrs, sha256 of every
  file, hard-link identity) must equal the host's manifest of the source tree.
* The guest kernel mounts the v6 bootstrap itself as EROFS (bootstrap and blob attached as
  read-only virtio-blk disks, ``-o device=BLOB``): for an uncompressed build it must see the
  same manifest, data included; for a zstd build the data is in zstd frames the kernel cannot
  decode (upstream serves those through fscache), so everything but the sha256s must match.

The only field RAFS legitimately drops here: a v5 bootstrap stores the root directory's mtime
as 0 (upstream's builder forces it, for repeatable builds; rafs-format §3.10), so the expected
v5 manifest has root mtime 0.  Compact v6 inodes (the builder's default) carry no timestamp at
all; the kernel then reports the superblock's build time, 0, for every entry.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hack.vm import initramfs
from tests.support import tree, vm

pytestmark = pytest.mark.vm

#: 64 KiB chunks: "128k+3" spans 3 chunks and "3m+17" 49 (the default 1 MiB gives 4)
SMALL_CHUNKS = str(64 << 10)
MOUNTED = b"mounted with root inode @ nid 128"  # the kernel's erofs mount line (v6 root nid)


@dataclasses.dataclass(frozen=True)
class SourceTree:
    root: Path
    manifest: tree.Manifest


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory,
           guest_image: initramfs.GuestImage) -> SourceTree:
    """tree.make_tree without the 5 GiB sparse file, its directory's mtime kept."""
    root = tree.make_tree(tmp_path_factory.mktemp("rafs-src") / "root")
    files = root / "files"
    before = files.stat()
    (files / "sparse-5g").unlink()
    os.utime(files, ns=(before.st_atime_ns, before.st_mtime_ns))
    manifest = tree.host_manifest(root)
    assert b"files/sparse-5g" not in manifest
    assert sum(e.type == "f" and (e.nlink or 0) > 1 for e in manifest.values()) == 3
    return SourceTree(root, manifest)


def build(source: Path, out: Path, *options: str, extended: bool = True) -> tuple[Path, Path]:
    """``rafs build``; returns (bootstrap, the single blob file)."""
    argv = [sys.executable, "-m", "rafs", "build", str(source), "-o", str(out), "-q", *options]
    subprocess.run(argv + ["--extended-inodes"] * extended, check=True, capture_output=True)
    blobs = list((out / "blobs").iterdir())
    assert len(blobs) == 1
    return out / "bootstrap", blobs[0]


def same_tree(guest: tree.Manifest, expected: tree.Manifest) -> None:
    assert tree.diff_manifests(expected, guest) == ""
    assert guest == expected
    assert len(guest) > tree.BIG_DIR_ENTRIES


def without_data(manifest: tree.Manifest) -> tree.Manifest:
    return {path: dataclasses.replace(e, sha256=None) for path, e in manifest.items()}


# ---- vhostfs serves the image over virtio-fs ------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [("--version", "6", "--compressor", "zstd", "--chunk-size", SMALL_CHUNKS),
     ("--version", "5", "--compressor", "lz4_block", "--digester", "sha256")],
    ids=["v6-zstd-64k-chunks", "v5-lz4-sha256"],
)
def test_vhostfs_serves_built_image(source: SourceTree, tmp_path: Path, socket_dir: Path,
                                    options: tuple[str, ...]) -> None:
    bootstrap, blob = build(source.root, tmp_path / "image", *options)
    expected = dict(source.manifest)
    if options[1] == "5":
        expected[b"."] = dataclasses.replace(expected[b"."], mtime_ns=0)
    log = tmp_path / "daemon.log"
    sock = socket_dir / "rafs.sock"
    argv = vm.vhostfs_rafs_command(sock, bootstrap, blob.parent)
    with vm.start_daemon(argv, sock, log_path=log):
        share = vm.VirtioFsDevice(socket_path=sock, tag="rafs", log_path=log)
        script = "mount -t virtiofs -o ro rafs /mnt\n" + tree.guest_manifest_script("/mnt")
        result = vm.run_guest(script, fs_devices=[share], timeout=180).check()
    same_tree(tree.parse_manifest(result.stdout), expected)


# ---- the guest kernel mounts the bootstrap as EROFS -----------------------------------------


def kernel_mount_script(manifest_cmd: str) -> str:
    return (vm.extra_drives_script(2)
            + "mount -t erofs -o ro,device=$EXTRA1 $EXTRA0 /mnt"
            + " || { dmesg | tail -20 >&2; exit 1; }\n"
            + manifest_cmd
            + "dmesg | grep erofs >&2\n")


def kernel_mount(bootstrap: Path, blob: Path, manifest_cmd: str) -> vm.GuestResult:
    # the blob file as it is: its chunk data starts at 0, 4 KiB aligned (an EROFS device)
    return vm.run_guest(kernel_mount_script(manifest_cmd), extra_drives=[bootstrap, blob],
                        timeout=120)


@pytest.mark.parametrize("extended", [True, False], ids=["extended-inodes", "compact-inodes"])
def test_kernel_mounts_uncompressed_v6(source: SourceTree, tmp_path: Path,
                                       extended: bool) -> None:
    bootstrap, blob = build(source.root, tmp_path / "image", "--compressor", "none",
                            "--chunk-size", SMALL_CHUNKS, extended=extended)
    result = kernel_mount(bootstrap, blob, tree.guest_manifest_script("/mnt")).check()
    assert MOUNTED in result.stderr
    expected = source.manifest
    if not extended:
        expected = {p: dataclasses.replace(e, mtime_ns=0) for p, e in expected.items()}
    same_tree(tree.parse_manifest(result.stdout), expected)


def test_kernel_lists_zstd_v6(source: SourceTree, tmp_path: Path) -> None:
    bootstrap, blob = build(source.root, tmp_path / "image", "--compressor", "zstd")
    # the walk still reads every file; the "data" is zstd frames, or past the (smaller)
    # compressed blob's end, where reads fail and vmtool reports and exits 1
    result = kernel_mount(bootstrap, blob,
                          tree.guest_manifest_script("/mnt").rstrip("\n") + " || true\n").check()
    assert MOUNTED in result.stderr
    same_tree(without_data(tree.parse_manifest(result.stdout)), without_data(source.manifest))
