"""Our output next to what the upstream builder wrote from the same files.

v6: the `rafs-v6-zstd` fixture was built by nydus-image from two files. Rebuilding them
(zstd, blake3, 1 MiB chunks) must give a blob with the same sections, flags, meta header
and digest array; only the zstd frames may differ (they depend on the libzstd version),
and every offset after them shifts by that difference.

v5: rebuilding the `rafs-v5-sha256` tree (uncompressed, sha256) must give upstream's
byte-identical blob and the same merkle root digest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rafs import open_image
from rafs.algorithms import Compressor, Digester
from rafs.blobmeta import META_HEADER_SIZE, TocEntry, read_toc
from rafs.builder import BuildOptions, build_from_directory
from rafs.cli.blobs import BlobFiles
from rafs.cli.unpack import unpack_to_directory
from tests.support.fixtures import V5_DIR, V6_DIR

FIXTURE = V6_DIR


@pytest.fixture(autouse=True, scope="module")
def _fixtures_present() -> None:
    if not FIXTURE.is_dir():
        pytest.fail(f"the shared RAFS fixtures are missing at {FIXTURE} (set VHOSTFS_FIXTURES)")


def test_rebuilt_fixture_blob_matches_upstream_layout(tmp_path: Path) -> None:
    upstream_image = open_image(FIXTURE / "bootstrap")
    with BlobFiles(upstream_image, FIXTURE / "blobs") as blobs:
        unpack_to_directory(blobs, tmp_path / "src")
    upstream = (FIXTURE / "blobs" / upstream_image.blobs[0].blob_id).read_bytes()
    result = build_from_directory(tmp_path / "src", tmp_path / "bootstrap", tmp_path / "blobs",
                                  BuildOptions(6, 1 << 20, Compressor.ZSTD))
    assert result.new_blob is not None
    ours = (tmp_path / "blobs" / result.new_blob.blob_id).read_bytes()
    theirs_toc, our_toc = read_toc(upstream), read_toc(ours)
    shift = our_toc[0].compressed_size - theirs_toc[0].compressed_size  # zstd output only
    def shape(toc: list[TocEntry]) -> list[tuple[bytes, int, int, int]]:
        return [(e.section_name, e.flags, e.compressed_size, e.uncompressed_size)
                for e in toc[1:]]

    assert shape(our_toc) == shape(theirs_toc)
    assert [e.compressed_offset - shift for e in our_toc] == \
        [e.compressed_offset for e in theirs_toc]
    assert our_toc[0].uncompressed_size == theirs_toc[0].uncompressed_size
    assert our_toc[3].digest == theirs_toc[3].digest  # the chunk digest arrays are equal
    header = our_toc[2].compressed_offset
    theirs_header = theirs_toc[2].compressed_offset
    # Meta headers agree except for the offset field, shifted like everything else.
    assert ours[header:header + 16] == upstream[theirs_header:theirs_header + 16]
    assert ours[header + 24:header + META_HEADER_SIZE] == \
        upstream[theirs_header + 24:theirs_header + META_HEADER_SIZE]
    assert ours[-512:] == upstream[-512:]  # the ToC tar header
    info, theirs_info = open_image(result.bootstrap).blobs[0], upstream_image.blobs[0]
    assert (info.features, info.chunk_count, info.uncompressed_size, info.toc_size) == \
        (theirs_info.features, theirs_info.chunk_count, theirs_info.uncompressed_size,
         theirs_info.toc_size)


def test_rebuilt_v5_fixture_has_upstream_blob_id_and_merkle_root(tmp_path: Path) -> None:
    fixture = V5_DIR
    upstream = open_image(fixture / "bootstrap")
    with BlobFiles(upstream, fixture / "blobs") as blobs:
        unpack_to_directory(blobs, tmp_path / "src")
    result = build_from_directory(tmp_path / "src", tmp_path / "bootstrap", tmp_path / "blobs",
                                  BuildOptions(5, 1 << 20, Compressor.NONE, Digester.SHA256))
    # Same chunks in the same order: the blob is byte-identical to upstream's.
    assert [b.blob_id for b in result.blobs] == [b.blob_id for b in upstream.blobs]
    ours = open_image(result.bootstrap)
    assert ours.verify_inode_digests() == upstream.verify_inode_digests()
    assert result.bootstrap.stat().st_size == (fixture / "bootstrap").stat().st_size
