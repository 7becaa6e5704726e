"""Planning blob reads for a file range, and assembling the range from decoded chunks.

Pure functions over `ChunkRef`s (as `Image.file_chunks` returns them): `plan_reads` groups
the stored chunks by blob, drops duplicates (deduplicated chunks appear in many places of a
file) and merges chunks that are adjacent in the blob file, so a backend sees few, large
range requests; `BlobRead.chunk_bytes` cuts each chunk's stored bytes back out of a fetched
range; `assemble` builds the requested file bytes from decoded chunks, zero-filling holes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from .errors import InvalidArgument
from .inode import ChunkRef
from .records import Buffer

DEFAULT_MAX_READ: Final = 4 << 20  # bytes; merged ranges stop growing past this


@dataclass(frozen=True, slots=True)
class BlobRead:
    """One contiguous byte range of one blob file and the chunks stored inside it."""

    blob_index: int  # index into Image.blobs
    offset: int  # bytes: start of the range in the blob file
    size: int  # bytes
    chunks: tuple[ChunkRef, ...]  # distinct chunks inside the range, by blob offset

    @property
    def end(self) -> int:
        return self.offset + self.size

    def chunk_bytes(self, data: Buffer, chunk: ChunkRef) -> memoryview:
        """The stored bytes of `chunk` inside `data`, the fetched bytes of this range."""
        start = chunk.compressed_offset - self.offset
        view = memoryview(data)
        if start < 0 or start + chunk.compressed_size > len(view):
            raise InvalidArgument(f"chunk at {chunk.compressed_offset} is not inside "
                                  f"range {self.offset}+{len(view)}")
        return view[start:start + chunk.compressed_size]


def _key(chunk: ChunkRef) -> tuple[int, int, int]:
    assert chunk.blob_index is not None  # holes are filtered out before
    return chunk.blob_index, chunk.compressed_offset, chunk.compressed_size


def plan_reads(chunks: Iterable[ChunkRef], *, max_gap: int = 0,
               max_read: int = DEFAULT_MAX_READ) -> list[BlobRead]:
    """Merge the stored chunks into per-blob ranges, ordered by (blob, offset).

    Args:
        chunks: chunk references, holes allowed (they need no read).
        max_gap: merge two chunks if at most this many unused bytes lie between them.
        max_read: do not grow a merged range beyond this many bytes (a single larger
            chunk still gets its own range).
    """
    stored = sorted({_key(c): c for c in chunks if not c.is_hole}.values(), key=_key)
    reads: list[BlobRead] = []
    group: list[ChunkRef] = []
    start = end = 0
    for chunk in stored:
        chunk_end = chunk.compressed_offset + chunk.compressed_size
        if group and (chunk.blob_index == group[0].blob_index
                      and chunk.compressed_offset <= end + max_gap
                      and max(end, chunk_end) - start <= max_read):
            group.append(chunk)
            end = max(end, chunk_end)
            continue
        if group:
            reads.append(_read(group, start, end))
        group, start, end = [chunk], chunk.compressed_offset, chunk_end
    if group:
        reads.append(_read(group, start, end))
    return reads


def _read(group: list[ChunkRef], start: int, end: int) -> BlobRead:
    blob_index = group[0].blob_index
    assert blob_index is not None
    return BlobRead(blob_index, start, end - start, tuple(group))


def slice_range(chunk: ChunkRef, content: bytes, offset: int, size: int) -> bytes:
    """The part of a chunk's decoded `content` that falls inside file [offset, offset+size)."""
    lo = max(offset, chunk.file_offset) - chunk.file_offset
    hi = min(offset + size, chunk.file_end) - chunk.file_offset
    return content[lo:hi] if hi > lo else b""


def assemble(chunks: Iterable[ChunkRef], content: Callable[[ChunkRef], bytes], offset: int,
             size: int) -> bytes:
    """File bytes [offset, offset+size) from `chunks` covering it; holes read as zeros.

    `content(chunk)` returns a stored chunk's decoded bytes (e.g. via rafs.chunk).
    """
    parts: list[bytes] = []
    for chunk in chunks:
        if chunk.is_hole:
            lo = max(offset, chunk.file_offset)
            hi = min(offset + size, chunk.file_end)
            parts.append(bytes(max(hi - lo, 0)))
        else:
            parts.append(slice_range(chunk, content(chunk), offset, size))
    return b"".join(parts)
