"""rafs.plan: merging chunk reads per blob and assembling file ranges (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import rafs
from rafs.plan import assemble, plan_reads, slice_range


def _chunk(file_offset: int, blob: int, offset: int, size: int) -> rafs.ChunkRef:
    return rafs.ChunkRef(file_offset=file_offset, uncompressed_size=size, blob_index=blob,
                         compressed_offset=offset, compressed_size=size,
                         uncompressed_offset=offset, digest=None, is_compressed=False,
                         chunk_index=0)


def test_adjacent_chunks_merge_per_blob_and_duplicates_drop() -> None:
    chunks = [_chunk(0, 0, 100, 50), _chunk(50, 0, 150, 50), _chunk(100, 1, 0, 10),
              _chunk(110, 0, 100, 50), rafs.ChunkRef.hole(160, 20), _chunk(180, 0, 400, 5)]
    reads = plan_reads(chunks)
    assert [(r.blob_index, r.offset, r.size, len(r.chunks)) for r in reads] == [
        (0, 100, 100, 2), (0, 400, 5, 1), (1, 0, 10, 1)]
    assert [(r.blob_index, r.offset, r.size) for r in plan_reads(chunks, max_gap=200)] == [
        (0, 100, 305), (1, 0, 10)]
    assert len(plan_reads(chunks, max_read=60)) == 4


def test_chunk_bytes_and_assemble() -> None:
    blob = bytes(range(256)) * 4
    chunks = [_chunk(0, 0, 10, 20), rafs.ChunkRef.hole(20, 5), _chunk(25, 0, 30, 10)]
    (read,) = plan_reads(chunks)
    fetched = blob[read.offset:read.end]
    content = {c.compressed_offset: bytes(read.chunk_bytes(fetched, c)) for c in read.chunks}
    out = assemble(chunks, lambda c: content[c.compressed_offset], 15, 15)
    assert out == blob[25:30] + b"\0" * 5 + blob[30:35]


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1000), st.integers(1, 100)),
                max_size=30), st.integers(0, 50))
def test_plan_covers_each_chunk_exactly_once(specs: list[tuple[int, int, int]], gap: int) -> None:
    chunks = [_chunk(0, blob, offset, size) for blob, offset, size in specs]
    reads = plan_reads(chunks, max_gap=gap, max_read=300)
    planned = [(r.blob_index, c.compressed_offset, c.compressed_size)
               for r in reads for c in r.chunks]
    assert sorted(planned) == sorted({(c.blob_index, c.compressed_offset, c.compressed_size)
                                      for c in chunks})
    for r in reads:
        for c in r.chunks:
            assert r.offset <= c.compressed_offset and c.compressed_offset + c.compressed_size \
                <= r.end


def test_slice_range_outside_is_empty() -> None:
    chunk = _chunk(100, 0, 0, 10)
    assert slice_range(chunk, b"0123456789", 0, 50) == b""
    assert slice_range(chunk, b"0123456789", 105, 2) == b"56"
