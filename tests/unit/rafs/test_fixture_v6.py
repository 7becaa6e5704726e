"""The upstream-built RAFS v6 fixture (EROFS, zstd chunks, BLAKE3, ToC) reads exactly."""

from __future__ import annotations

import hashlib

import pytest

import rafs
from rafs.algorithms import digest
from rafs.blobmeta import TOC_ENTRY_DIGEST_ARRAY, check_data_section, check_toc, find_entry

from .conftest import Blobs, walk

BLOB_ID = "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef"
EXPECTED = {
    b"/lib.rs": (16931, "1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69"),
    b"/sync_io.rs": (13400, "e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96"),
}


def test_files_sizes_and_sha256(v6_image: rafs.Image, v6_blobs: Blobs) -> None:
    actual = {path: (inode.size, hashlib.sha256(v6_blobs.read(inode.ino)).hexdigest())
              for path, inode in walk(v6_image)}
    assert actual == EXPECTED


def test_image_facts(v6_image: rafs.Image) -> None:
    assert (v6_image.version, v6_image.root_ino, v6_image.inode_count) == (6, 128, 3)
    assert (v6_image.compressor, v6_image.digester) == (rafs.Compressor.ZSTD,
                                                        rafs.Digester.BLAKE3)
    (blob,) = v6_image.blobs
    assert blob.blob_id == BLOB_ID and blob.chunk_count == 2
    assert blob.features & rafs.BlobFeatures.HAS_TOC
    assert blob.meta is not None and blob.meta.uncompressed_size == 32


def test_root_directory_entries(v6_image: rafs.Image) -> None:
    entries = [(name, inode.ino) for _, name, inode in v6_image.readdir(128)]
    assert entries == [(b".", 128), (b"..", 128), (b"lib.rs", 133), (b"sync_io.rs", 136)]
    lib = v6_image.lookup(128, b"lib.rs")
    assert lib is not None and lib.is_reg and lib.nlink == 1
    assert lib.mtime == 1676819553
    assert v6_image.lookup(128, b"missing") is None
    assert v6_image.lookup(128, b"..") == v6_image.inode(128)


def test_readdir_resume(v6_image: rafs.Image) -> None:
    full = list(v6_image.readdir(128))
    for i, (next_index, _, _) in enumerate(full):
        assert list(v6_image.readdir(128, next_index)) == full[i + 1:]


def test_chunks_verify_against_digests_and_blob_meta(v6_image: rafs.Image,
                                                     v6_blobs: Blobs) -> None:
    blob = v6_image.blobs[0]
    meta = rafs.BlobMeta.from_blob(v6_blobs.data[0], blob)
    for _, inode in walk(v6_image):
        (chunk,) = v6_image.file_chunks(inode.ino, 0, inode.size)
        record = meta.chunk(chunk.chunk_index)
        # ci v1 records, the inlined digest array and the chunk table agree
        assert (record.compressed_offset, record.compressed_size, record.uncompressed_offset,
                record.uncompressed_size, record.digest) == (
            chunk.compressed_offset, chunk.compressed_size, chunk.uncompressed_offset,
            chunk.uncompressed_size, chunk.digest)
        raw = v6_blobs.data[0][chunk.compressed_offset:][:chunk.compressed_size]
        data = rafs.decode_chunk(chunk, raw, blob.compressor, blob.digester)
        assert digest(rafs.Digester.BLAKE3, data) == chunk.digest


def test_blob_meta_resolves_chunks_without_chunk_table(v6_bytes: bytes, v6_blobs: Blobs) -> None:
    image = rafs.Image.from_bytes(v6_bytes)
    image.attach_blob_meta(rafs.BlobMeta.from_blob(v6_blobs.data[0], image.blobs[0]))
    other = Blobs.__new__(Blobs)
    other.data, other.image = v6_blobs.data, image
    assert hashlib.sha256(other.read(133)).hexdigest() == EXPECTED[b"/lib.rs"][1]


def test_blob_id_excludes_digest_array(v6_image: rafs.Image, v6_blobs: Blobs) -> None:
    data = v6_blobs.data[0]
    assert hashlib.sha256(data).hexdigest() != BLOB_ID
    rafs.check_blob_id(data, v6_image.blobs[0])
    entries = check_toc(data, v6_image.blobs[0])
    assert [e.section_name for e in entries] == [b"image.blob", b"blob.meta",
                                                 b"blob.meta.header", b"blob.digest"]
    check_data_section(data, entries[0])
    for entry in entries[1:]:
        rafs.read_section(data, entry)  # every section digest verifies
    with pytest.raises(rafs.InvalidArgument):
        rafs.read_section(data, entries[0])
    array = find_entry(entries, TOC_ENTRY_DIGEST_ARRAY)
    assert array is not None and array.uncompressed_size == 64
    flipped = bytearray(data)
    flipped[array.compressed_offset] ^= 0xFF  # the id does not cover the array payload
    assert rafs.compute_blob_id(bytes(flipped)) == BLOB_ID
    flipped[0] ^= 0xFF
    with pytest.raises(rafs.DigestMismatch):
        rafs.check_blob_id(bytes(flipped), v6_image.blobs[0])


def test_corrupt_chunk_is_detected(v6_image: rafs.Image, v6_blobs: Blobs) -> None:
    blob = v6_image.blobs[0]
    (chunk,) = v6_image.file_chunks(133, 0, 100)
    raw = bytearray(v6_blobs.data[0][chunk.compressed_offset:][:chunk.compressed_size])
    raw[-5] ^= 0x40
    with pytest.raises(rafs.CorruptChunk):
        rafs.decode_chunk(chunk, bytes(raw), blob.compressor, blob.digester)
    with pytest.raises(rafs.CorruptChunk):
        rafs.decode_chunk(chunk, bytes(raw[:-1]), blob.compressor, blob.digester)


def test_v6_has_no_inode_digests(v6_image: rafs.Image) -> None:
    with pytest.raises(rafs.Unsupported):
        v6_image.verify_inode_digests()
