"""rafs.chunk: bounded decompression and digest checks for every chunk encoding."""

from __future__ import annotations

import gzip
import zlib

import lz4.block  # type: ignore[import-untyped]
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import rafs
from rafs.algorithms import digest
from rafs.chunk import decompress

ENCODERS = {
    rafs.Compressor.LZ4_BLOCK: lambda d: lz4.block.compress(d, store_size=False),
    rafs.Compressor.ZSTD: lambda d: zstandard.ZstdCompressor(level=3).compress(d),
    rafs.Compressor.GZIP: gzip.compress,
}


def _ref(data: bytes, stored: bytes, compressed: bool, digester: rafs.Digester) -> rafs.ChunkRef:
    return rafs.ChunkRef(file_offset=0, uncompressed_size=len(data), blob_index=0,
                         compressed_offset=0, compressed_size=len(stored),
                         uncompressed_offset=0, digest=digest(digester, data),
                         is_compressed=compressed, chunk_index=0)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), compressor=st.sampled_from(list(ENCODERS)),
       digester=st.sampled_from(list(rafs.Digester)))
def test_round_trip(data: bytes, compressor: rafs.Compressor, digester: rafs.Digester) -> None:
    stored = ENCODERS[compressor](data)
    ref = _ref(data, stored, True, digester)
    assert rafs.decode_chunk(ref, stored, compressor, digester) == data


@settings(max_examples=150, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000), compressor=st.sampled_from(list(ENCODERS)),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1,
                      max_size=4), cut=st.integers(0, 8))
def test_corrupted_stream_raises_corrupt_chunk(data: bytes, compressor: rafs.Compressor,
                                               flips: list[tuple[int, int]], cut: int) -> None:
    stored = bytearray(ENCODERS[compressor](data))
    for offset, mask in flips:
        stored[offset % len(stored)] ^= mask
    stored = stored[:len(stored) - cut] if cut < len(stored) else stored
    ref = _ref(data, bytes(stored), True, rafs.Digester.BLAKE3)
    try:
        assert rafs.decode_chunk(ref, bytes(stored), compressor, rafs.Digester.BLAKE3) == data
    except rafs.CorruptChunk:
        pass


def test_raw_chunk_and_digest_mismatch() -> None:
    data = b"hello world"
    ref = _ref(data, data, False, rafs.Digester.SHA256)
    assert rafs.decode_chunk(ref, data, rafs.Compressor.ZSTD, rafs.Digester.SHA256) == data
    with pytest.raises(rafs.DigestMismatch):
        rafs.decode_chunk(ref, b"hellO world", rafs.Compressor.NONE, rafs.Digester.SHA256)
    assert rafs.decode_chunk(ref, b"hellO world", rafs.Compressor.NONE, rafs.Digester.SHA256,
                             verify=False) == b"hellO world"
    with pytest.raises(rafs.CorruptChunk):
        rafs.decode_chunk(ref, data + b"!", rafs.Compressor.NONE, rafs.Digester.SHA256)


def test_output_is_bounded_by_the_recorded_size() -> None:
    bomb = b"\0" * (8 << 20)
    for compressor, encode in ENCODERS.items():
        with pytest.raises(rafs.CorruptChunk):
            decompress(compressor, encode(bomb), 4096)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bomb)
    with pytest.raises(rafs.CorruptChunk):
        decompress(rafs.Compressor.ZSTD, unsized, 4096)
    with pytest.raises(rafs.FormatError):
        decompress(rafs.Compressor.ZSTD, unsized, 1 << 40)


def test_gzip_trailing_garbage_and_truncation() -> None:
    stored = gzip.compress(b"abc" * 100)
    with pytest.raises(rafs.CorruptChunk):
        decompress(rafs.Compressor.GZIP, stored[:-4], 300)
    raw_deflate = zlib.compress(b"abc")
    with pytest.raises(rafs.CorruptChunk):
        decompress(rafs.Compressor.GZIP, raw_deflate, 3)


def test_hole_has_no_bytes() -> None:
    with pytest.raises(rafs.Unsupported):
        rafs.decode_chunk(rafs.ChunkRef.hole(0, 10), b"", rafs.Compressor.NONE,
                          rafs.Digester.SHA256)
