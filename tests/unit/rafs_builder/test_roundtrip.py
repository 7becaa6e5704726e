"""Build from a generated directory, read back through the reader, compare with the source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rafs import open_image
from rafs.algorithms import Compressor, Digester
from rafs.builder import BuildOptions, build_from_directory
from rafs.cli.blobs import BlobFiles
from rafs.cli.check import check_image
from rafs.cli.unpack import unpack_to_directory

from .helpers import CHUNK, make_source, snapshot_dir, snapshot_image, without

CASES = [
    pytest.param(BuildOptions(6, CHUNK, Compressor.NONE, extended_inodes=True), id="v6-none-ext"),
    pytest.param(BuildOptions(6, CHUNK, Compressor.ZSTD, Digester.SHA256), id="v6-zstd-sha256"),
    pytest.param(BuildOptions(6, CHUNK, Compressor.LZ4_BLOCK), id="v6-lz4"),
    pytest.param(BuildOptions(5, CHUNK, Compressor.NONE), id="v5-none"),
    pytest.param(BuildOptions(5, CHUNK, Compressor.ZSTD, Digester.SHA256), id="v5-zstd-sha256"),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_source(tmp_path_factory.mktemp("src") / "root")


def _build(source: Path, out: Path, options: BuildOptions) -> Path:
    result = build_from_directory(source, out / "bootstrap", out / "blobs", options)
    assert result.bootstrap.exists()
    return result.bootstrap


def _keeps_mtime(options: BuildOptions) -> bool:
    return options.version == 5 or options.extended_inodes


@pytest.mark.parametrize("options", CASES)
def test_reader_sees_the_source(source: Path, tmp_path: Path, options: BuildOptions) -> None:
    bootstrap = _build(source, tmp_path, options)
    image = open_image(bootstrap)
    assert (image.version, image.chunk_size) == (options.version, CHUNK)
    assert (image.compressor, image.digester) == (options.compressor, options.digester)
    with BlobFiles(image, tmp_path / "blobs") as blobs:
        got = snapshot_image(blobs)
    want = snapshot_dir(source)
    if not _keeps_mtime(options):
        got, want = without(got, "mtime_ns"), without(want, "mtime_ns")
    assert got.keys() == want.keys()
    assert got == want


@pytest.mark.parametrize("options", CASES)
def test_check_passes_and_unpack_restores(source: Path, tmp_path: Path,
                                          options: BuildOptions) -> None:
    bootstrap = _build(source, tmp_path, options)
    with BlobFiles(open_image(bootstrap), tmp_path / "blobs") as blobs:
        report = check_image(blobs)
        assert report.ok, report.problems
        assert report.blobs == 1 and report.files > 400
        unpack_to_directory(blobs, tmp_path / "unpacked")
    got, want = snapshot_dir(tmp_path / "unpacked"), snapshot_dir(source)
    if not _keeps_mtime(options):
        got, want = without(got, "mtime_ns"), without(want, "mtime_ns")
    assert got == want


@pytest.mark.parametrize("options", CASES)
def test_build_is_deterministic(source: Path, tmp_path: Path, options: BuildOptions) -> None:
    outputs = []
    for run in ("a", "b"):
        bootstrap = _build(source, tmp_path / run, options)
        blobs = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest())
                       for p in (tmp_path / run / "blobs").iterdir())
        outputs.append((bootstrap.read_bytes(), blobs))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][1]) == 1


def test_duplicate_chunks_are_stored_once(source: Path, tmp_path: Path) -> None:
    bootstrap = _build(source, tmp_path, BuildOptions(6, CHUNK, Compressor.NONE))
    image = open_image(bootstrap)
    multi = image.lookup(image.root_ino, b"multi.bin")
    dup = image.lookup(image.root_ino, b"dup-of-multi")
    assert multi is not None and dup is not None
    a = image.file_chunks(multi.ino, 0, multi.size)
    b = image.file_chunks(dup.ino, 0, dup.size)
    assert [(c.blob_index, c.chunk_index) for c in a] == [(c.blob_index, c.chunk_index) for c in b]
    sparse = image.lookup(image.root_ino, b"sparse")
    assert sparse is not None
    zero_chunks = {c.chunk_index for c in image.file_chunks(sparse.ino, 0, sparse.size)
                   if c.file_offset != 2 * CHUNK}
    assert len(zero_chunks) == 2  # every all-zero full chunk is one stored chunk, + the tail


def test_hard_links_share_one_v6_inode(source: Path, tmp_path: Path) -> None:
    image = open_image(_build(source, tmp_path, BuildOptions(6, CHUNK, Compressor.NONE)))
    links = image.lookup(image.root_ino, b"links")
    assert links is not None
    a, b = image.lookup(links.ino, b"a"), image.lookup(links.ino, b"b")
    c = image.lookup(image.root_ino, b"link-c")
    assert a is not None and b is not None and c is not None
    assert a.ino == b.ino == c.ino and a.nlink == 3


def test_v5_inode_digests_verify(source: Path, tmp_path: Path) -> None:
    image = open_image(_build(source, tmp_path, BuildOptions(5, CHUNK, Compressor.NONE)))
    root_digest = image.verify_inode_digests()
    assert len(root_digest) == 32
