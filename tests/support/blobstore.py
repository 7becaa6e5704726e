"""Fakes for backends tests: an in-memory BlobBackend and a sha256-checking chunk codec."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

import trio

from backends.base import BlobId, check_range
from backends.cache import ChunkSpec
from backends.errors import BlobNotFound, CorruptData
from backends.metrics import BackendMetrics


class InMemoryBackend:
    """Blobs in a dict; `gate` (if set) is awaited inside every read, `mangle` corrupts."""

    def __init__(self, blobs: dict[BlobId, bytes]) -> None:
        self.blobs = blobs
        self.metrics = BackendMetrics("memory")
        self.gate: trio.Event | None = None
        self.mangle: Callable[[int, bytes], bytes] | None = None  # (offset, data) -> data
        self.closed = False

    async def blob_size(self, blob_id: BlobId) -> int:
        if blob_id not in self.blobs:
            raise BlobNotFound(blob_id)
        return len(self.blobs[blob_id])

    async def read_range(self, blob_id: BlobId, offset: int, size: int) -> bytes:
        check_range(blob_id, offset, size)
        self.metrics.record(blob_id, offset, size, 0.0, True)
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        data = self.blobs[blob_id][offset:offset + size]
        if self.mangle is not None:
            data = self.mangle(offset, data)
        return data

    async def aclose(self) -> None:
        self.closed = True


class ZlibSha256Codec:
    """Chunks stored zlib-compressed; digest = sha256 of the uncompressed bytes."""

    def __init__(self) -> None:
        self.decodes = 0

    def decode(self, chunk: ChunkSpec, stored: bytes) -> bytes:
        self.decodes += 1
        try:
            plain = zlib.decompress(stored)
        except zlib.error as exc:
            raise CorruptData(f"chunk {chunk.index}: {exc}") from exc
        self.verify(chunk, plain)
        return plain

    def verify(self, chunk: ChunkSpec, plain: bytes) -> None:
        if hashlib.sha256(plain).digest() != chunk.digest:
            raise CorruptData(f"chunk {chunk.index}: digest mismatch")


def make_blob(contents: list[bytes], align: int = 4096) -> tuple[BlobId, bytes, list[ChunkSpec]]:
    """A blob of zlib chunks laid out like RAFS v6 (4 KiB-aligned uncompressed offsets)."""
    stored = b""
    specs: list[ChunkSpec] = []
    uoff = 0
    for i, plain in enumerate(contents):
        packed = zlib.compress(plain)
        specs.append(ChunkSpec(i, len(stored), len(packed), uoff, len(plain),
                               hashlib.sha256(plain).digest()))
        stored += packed
        uoff += -(-len(plain) // align) * align
    return BlobId(hashlib.sha256(stored).hexdigest()), stored, specs


def data_size(specs: list[ChunkSpec], align: int = 4096) -> int:
    last = specs[-1]
    return last.uncompressed_offset + -(-last.uncompressed_size // align) * align
