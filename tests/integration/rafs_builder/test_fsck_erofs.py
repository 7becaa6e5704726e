"""External oracle: erofs-utils' fsck.erofs/dump.erofs read our v6 bootstraps.

`fsck.erofs --device=<blob>... --extract=<dir> <bootstrap>` checks the EROFS structure and
extracts the tree, reading file data from the blobs as EROFS "extra devices" through the
chunk indexes. For uncompressed builds the blob files are used as they are (the builder
lays their data out as the devices' block images). For zstd builds fsck.erofs can only walk
the metadata; extraction is then checked against a device image rebuilt by decompressing
every chunk to its uncompressed offset (what a Nydus cache file holds).

fsck.erofs 1.5 does not recreate hard links, xattrs, setuid bits or special-file modes
when extracting, so those fields are left out of the comparison (the reader tests cover
them).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from rafs import open_image
from rafs.algorithms import Compressor
from rafs.builder import BuildOptions, build_from_directory
from rafs.cli.blobs import BlobFiles
from rafs.cli.walk import walk
from tests.unit.rafs_builder.helpers import CHUNK, Item, make_source, snapshot_dir, without

FSCK = shutil.which("fsck.erofs")


@pytest.fixture(autouse=True, scope="module")
def _erofs_utils() -> None:
    """fsck.erofs is the external oracle the issue names: missing means a broken setup."""
    if FSCK is None:
        pytest.fail("fsck.erofs not found: run hack/setup (it installs erofs-utils)")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("src") / "root")


def _fsck(bootstrap: Path, devices: list[Path], extract: Path | None) -> None:
    args = [str(FSCK), *(f"--device={d}" for d in devices)]
    if extract is not None:
        args.append(f"--extract={extract}")
    done = subprocess.run([*args, str(bootstrap)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _comparable(snapshot: dict[bytes, Item], mtimes: bool) -> dict[bytes, Item]:
    fields = ("links", "xattrs") + (() if mtimes else ("mtime_ns",))
    result = without(snapshot, *fields)
    return {p: replace(i, mode=i.mode & 0o777 if i.kind in ("reg", "dir") else 0)
            for p, i in result.items()}


def _blob_paths(bootstrap: Path, blob_dir: Path) -> list[Path]:
    return [blob_dir / b.blob_id for b in open_image(bootstrap).blobs]


@pytest.mark.parametrize("extended", [True, False], ids=["extended", "compact"])
def test_fsck_extracts_uncompressed_build(source: Path, tmp_path: Path, extended: bool) -> None:
    options = BuildOptions(6, CHUNK, Compressor.NONE, extended_inodes=extended)
    result = build_from_directory(source, tmp_path / "bootstrap", tmp_path / "blobs", options)
    _fsck(result.bootstrap, _blob_paths(result.bootstrap, tmp_path / "blobs"), tmp_path / "x")
    got = _comparable(snapshot_dir(tmp_path / "x"), mtimes=extended)
    assert got == _comparable(snapshot_dir(source), mtimes=extended)


def _device_image(blobs: BlobFiles, index: int, out: Path) -> Path:
    """The uncompressed address space of blob `index`: every chunk at its offset."""
    image = blobs.image
    with open(out, "wb") as dev:
        dev.truncate(image.blobs[index].uncompressed_size or 0)
        for _, inode in walk(image):
            if not inode.is_reg:
                continue
            pieces = blobs.file_pieces(inode.ino, inode.size)
            for ref, data in zip(image.file_chunks(inode.ino, 0, inode.size), pieces,
                                 strict=True):
                if ref.blob_index == index:
                    dev.seek(ref.uncompressed_offset)
                    dev.write(data)
    return out


def test_fsck_walks_zstd_build_and_extracts_with_cache_devices(source: Path,
                                                               tmp_path: Path) -> None:
    options = BuildOptions(6, CHUNK, Compressor.ZSTD)
    result = build_from_directory(source, tmp_path / "bootstrap", tmp_path / "blobs", options)
    raw_blobs = _blob_paths(result.bootstrap, tmp_path / "blobs")
    _fsck(result.bootstrap, raw_blobs, None)  # metadata only: data is zstd
    with BlobFiles(open_image(result.bootstrap), tmp_path / "blobs") as blobs:
        devices = [_device_image(blobs, i, tmp_path / f"dev{i}") for i in range(len(raw_blobs))]
    _fsck(result.bootstrap, devices, tmp_path / "x")
    assert _comparable(snapshot_dir(tmp_path / "x"), False) == \
        _comparable(snapshot_dir(source), False)


def test_fsck_reads_layer_referencing_chunk_dict(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "lib.so").write_bytes(bytes(range(256)) * 1024)
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "copy.so").write_bytes(bytes(range(256)) * 1024)
    (upper / "new.txt").write_bytes(b"only in the upper layer\n" * 500)
    options = BuildOptions(6, CHUNK, Compressor.NONE)
    first = build_from_directory(base, tmp_path / "b1", tmp_path / "blobs", options)
    second = build_from_directory(upper, tmp_path / "b2", tmp_path / "blobs",
                                  replace(options, chunk_dict=first.bootstrap))
    assert len(second.blobs) == 2 and second.blobs[0].blob_id == first.blobs[0].blob_id
    _fsck(second.bootstrap, _blob_paths(second.bootstrap, tmp_path / "blobs"), tmp_path / "x")
    assert (tmp_path / "x" / "copy.so").read_bytes() == (upper / "copy.so").read_bytes()
    assert (tmp_path / "x" / "new.txt").read_bytes() == (upper / "new.txt").read_bytes()


def test_dump_erofs_sees_devices_and_root(source: Path, tmp_path: Path) -> None:
    dump = shutil.which("dump.erofs")
    if dump is None:
        pytest.fail("dump.erofs not found: run hack/setup (it installs erofs-utils)")
    result = build_from_directory(source, tmp_path / "bootstrap", tmp_path / "blobs",
                                  BuildOptions(6, CHUNK, Compressor.NONE))
    blob = result.blobs[0]
    done = subprocess.run([dump, f"--device={tmp_path / 'blobs' / blob.blob_id}", "-s",
                           str(result.bootstrap)], capture_output=True, text=True, check=True)
    assert "root nid:                          128" in done.stdout
    assert "chunked_file device_table" in done.stdout
    blocks = int(done.stdout.split("Filesystem blocks:")[1].split()[0])
    # erofs-utils adds every device's blocks to s_blocks, which Nydus (and we) set to the
    # devices' total already: the device slot's count must be uncompressed_size / 4096.
    assert blocks == 2 * ((blob.uncompressed_size or 0) // 4096)


def test_fsck_accepts_image_without_blobs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "empty-dir").mkdir(parents=True)
    (source / "empty-file").write_bytes(b"")
    (source / "link").symlink_to("empty-file")
    result = build_from_directory(source, tmp_path / "bootstrap", tmp_path / "blobs")
    assert result.blobs == []
    _fsck(result.bootstrap, [], tmp_path / "x")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["empty-dir", "empty-file",
                                                                  "link"]
    assert (tmp_path / "x" / "link").readlink() == Path("empty-file")
