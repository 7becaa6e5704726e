"""Chunk dictionary reuse across builds, and the blob file format as the reader parses it."""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from rafs import open_image
from rafs.algorithms import Compressor, Digester
from rafs.blobinfo import BlobFeatures
from rafs.blobmeta import BlobMeta, compute_blob_id, read_toc
from rafs.builder import BuildError, BuildOptions, build_from_directory
from rafs.builder.blob import tar_header
from rafs.cli.blobs import BlobFiles
from rafs.cli.check import check_image

from .helpers import CHUNK, snapshot_dir, snapshot_image

SHARED = hashlib.sha512(b"shared").digest() * (3 * CHUNK // 64)


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    base, upper = tmp_path / "base", tmp_path / "upper"
    for d in (base, upper):
        d.mkdir()
    (base / "shared.bin").write_bytes(SHARED)
    (base / "only-base").write_bytes(b"base\n" * 100)
    (upper / "again.bin").write_bytes(SHARED)
    (upper / "mixed.bin").write_bytes(SHARED[:CHUNK] + b"fresh" * 5000)
    return base, upper


@pytest.mark.parametrize("version", [5, 6])
def test_layer_references_dict_chunks_instead_of_storing_them(tmp_path: Path,
                                                              version: int) -> None:
    base, upper = _dirs(tmp_path)
    options = BuildOptions(version, CHUNK, Compressor.ZSTD)
    first = build_from_directory(base, tmp_path / "b1", tmp_path / "blobs", options)
    second = build_from_directory(upper, tmp_path / "b2", tmp_path / "blobs",
                                  replace(options, chunk_dict=first.bootstrap))
    assert first.new_blob is not None and second.new_blob is not None
    assert [b.blob_id for b in second.blobs] == [first.new_blob.blob_id,
                                                   second.new_blob.blob_id]
    # Only the chunks of "fresh" data were stored in the new blob.
    fresh = -(-len(b"fresh" * 5000) // CHUNK)
    assert second.new_blob.chunk_count == fresh
    with BlobFiles(open_image(second.bootstrap), tmp_path / "blobs") as blobs:
        assert check_image(blobs).ok
        got = {p: i.content for p, i in snapshot_image(blobs).items()}
    assert got == {p: i.content for p, i in snapshot_dir(upper).items()}


def test_unused_dict_blobs_are_left_out(tmp_path: Path) -> None:
    base, _ = _dirs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "unrelated").write_bytes(b"nothing in common")
    first = build_from_directory(base, tmp_path / "b1", tmp_path / "blobs")
    second = build_from_directory(other, tmp_path / "b2", tmp_path / "blobs",
                                  BuildOptions(chunk_dict=first.bootstrap))
    assert [b.blob_id for b in second.blobs] == [second.new_blob.blob_id
                                                 if second.new_blob else ""]


def test_incompatible_dict_is_refused(tmp_path: Path) -> None:
    base, upper = _dirs(tmp_path)
    first = build_from_directory(base, tmp_path / "b1", tmp_path / "blobs",
                                 BuildOptions(6, CHUNK))
    with pytest.raises(BuildError, match="chunk size"):
        build_from_directory(upper, tmp_path / "b2", tmp_path / "blobs",
                             BuildOptions(6, 2 * CHUNK, chunk_dict=first.bootstrap))
    with pytest.raises(BuildError, match="RAFS v6"):
        build_from_directory(upper, tmp_path / "b2", tmp_path / "blobs",
                             BuildOptions(5, CHUNK, chunk_dict=first.bootstrap))


def test_v6_blob_sections_parse_and_hash_as_upstream_defines(tmp_path: Path) -> None:
    base, _ = _dirs(tmp_path)
    result = build_from_directory(base, tmp_path / "b", tmp_path / "blobs",
                                  BuildOptions(6, CHUNK, Compressor.ZSTD, Digester.SHA256))
    info = open_image(result.bootstrap).blobs[0]
    data = (tmp_path / "blobs" / info.blob_id).read_bytes()
    assert compute_blob_id(data) == info.blob_id
    assert [e.section_name for e in read_toc(data)] == [b"image.blob", b"blob.meta",
                                                        b"blob.meta.header", b"blob.digest"]
    assert int(info.features) == 0x7000_0021 and info.toc_size == 4 * 128 + 512
    meta = BlobMeta.from_blob(data, info)
    assert meta.count == info.chunk_count
    assert info.features & BlobFeatures.ALIGNED
    assert all(meta.chunk(i).uncompressed_offset % 4096 == 0 for i in range(meta.count))


def test_uncompressed_v6_blob_is_its_own_device_image(tmp_path: Path) -> None:
    base, _ = _dirs(tmp_path)
    result = build_from_directory(base, tmp_path / "b", tmp_path / "blobs",
                                  BuildOptions(6, CHUNK, Compressor.NONE))
    image = open_image(result.bootstrap)
    data = (tmp_path / "blobs" / image.blobs[0].blob_id).read_bytes()
    shared = image.lookup(image.root_ino, b"shared.bin")
    assert shared is not None
    for ref in image.file_chunks(shared.ino, 0, shared.size):
        assert ref.compressed_offset == ref.uncompressed_offset
        start = ref.uncompressed_offset
        assert data[start:start + ref.uncompressed_size] == \
            SHARED[ref.file_offset:ref.file_offset + ref.uncompressed_size]


def test_section_tar_headers_are_valid_gnu_headers(tmp_path: Path) -> None:
    raw = tar_header(b"blob.meta", 12345)
    info = tarfile.TarInfo.frombuf(raw, "utf-8", "strict")
    assert (info.name, info.size, info.type) == ("blob.meta", 12345, tarfile.REGTYPE)
    assert raw[148:156] == b"%07o\0" % sum(raw[:148] + b" " * 8 + raw[156:])
