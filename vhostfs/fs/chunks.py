"""Verified chunk content for the RAFS filesystem: through the blob cache, or off a backend.

`ChunkSource` is all the RAFS filesystem asks of storage: the uncompressed, digest-checked
content of some chunks of one blob. Two implementations:

* `CachedChunks` goes through `backends.cache.CachedBackend`: chunks are fetched once (merged
  into range requests), verified, stored uncompressed in the local cache and served from it
  afterwards, as nydusd's blobcache does.
* `DirectChunks` reads the stored bytes from any BlobBackend (for example blobs in a local
  directory) on every request, merges neighbouring chunks into one range read, and verifies
  each chunk before it is used.

Either way no chunk reaches the guest unverified when the image records its digest: decode
failures and digest mismatches surface as errors with errno EIO naming blob and chunk.
(`RafsFilesystem` makes sure every chunk has a digest, loading v6 blob meta and digest arrays
through `fetch_blob_meta` when the bootstrap's chunk table lacks them.)

Prefetch (`prefetch`) and metrics (`metrics`) live here too because only the cache can keep
prefetched chunks; `DirectChunks` accepts prefetch requests and does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from backends.base import BlobBackend, blob_id
from backends.cache import CachedBackend, CachedBlob, ChunkSpec
from backends.errors import CorruptData
from backends.metrics import BackendMetrics
from backends.prefetch import Prefetcher, PrefetchSettings
from rafs import BlobFeatures, BlobInfo, BlobMeta, ChunkRef, RafsError, decode_chunk, plan_reads
from rafs.blobmeta import (
    META_HEADER_SIZE,
    TOC_ENTRY_DIGEST_ARRAY,
    check_toc,
    decode_section,
    find_entry,
)
from rafs.chunk import verify_chunk
from rafs.errors import Unsupported


class ChunkSource(Protocol):
    # Raw, unverified blob bytes (blob meta, ToC): the caller verifies what it reads.
    backend: BlobBackend

    async def read_chunks(self, blob: BlobInfo, chunks: Sequence[ChunkRef]) -> list[bytes]:
        """The verified uncompressed content of each chunk (all of `blob`), in order."""
        ...

    async def prefetch(self, blob: BlobInfo, chunks: Sequence[ChunkRef]) -> None:
        """Best effort: bring `chunks` into local storage; returns when all were tried."""
        ...

    def metrics(self) -> dict[str, dict[str, object]]:
        """nydusd's §7.4 bodies: {"backend": ..., "blobcache": ...} (blobcache if cached)."""
        ...

    async def aclose(self) -> None: ...


def backend_metrics(backend: object) -> dict[str, object]:
    metrics = getattr(backend, "metrics", None)
    return metrics.to_json() if isinstance(metrics, BackendMetrics) else {}


async def fetch_blob_meta(backend: BlobBackend, blob: BlobInfo) -> BlobMeta:
    """The chunk-info array of a v6 blob and, when the blob inlines them, its chunk digests.

    Trust: the digest array is taken only from a ToC whose sha256 matches the bootstrap's
    blob table (and each section's own sha256 in the ToC), so digests are as trustworthy as
    the bootstrap; the chunk-info array only says where chunks are, which their digests check.
    """
    meta = blob.meta
    if meta is None:
        raise Unsupported(f"blob {blob.blob_id}: the image records no blob meta")
    bid = blob_id(blob.blob_id)
    section = await backend.read_range(bid, meta.offset, meta.compressed_size + META_HEADER_SIZE)
    digests = None
    wanted = BlobFeatures.INLINED_CHUNK_DIGEST | BlobFeatures.HAS_TOC
    if blob.features & wanted == wanted and blob.toc_size:
        size = await backend.blob_size(bid)
        if size < blob.toc_size:
            raise CorruptData(f"blob {bid}: {size} bytes cannot hold a {blob.toc_size}-byte ToC")
        tail = await backend.read_range(bid, size - blob.toc_size, blob.toc_size)
        entry = find_entry(check_toc(tail, blob), TOC_ENTRY_DIGEST_ARRAY)
        if entry is not None:
            raw = await backend.read_range(bid, entry.compressed_offset, entry.compressed_size)
            digests = decode_section(entry, raw)
    return BlobMeta.from_section(section, blob, digests)


def chunk_spec(chunk: ChunkRef) -> ChunkSpec:
    return ChunkSpec(
        index=chunk.chunk_index,
        compressed_offset=chunk.compressed_offset,
        compressed_size=chunk.compressed_size,
        uncompressed_offset=chunk.uncompressed_offset,
        uncompressed_size=chunk.uncompressed_size,
        digest=chunk.digest,
    )


class RafsCodec:
    """The cache's ChunkCodec for one blob: RAFS decompression and digest checks."""

    def __init__(self, blob: BlobInfo, refs: dict[int, ChunkRef]) -> None:
        self._blob = blob
        self._refs = refs  # chunk index -> ChunkRef, for the algorithms' view of a chunk

    def _ref(self, chunk: ChunkSpec) -> ChunkRef:
        ref = self._refs.get(chunk.index)
        if ref is None:
            ref = ChunkRef(
                0,
                chunk.uncompressed_size,
                self._blob.index,
                chunk.compressed_offset,
                chunk.compressed_size,
                chunk.uncompressed_offset,
                chunk.digest,
                chunk.compressed_size != chunk.uncompressed_size,
                chunk.index,
            )
        return ref

    def decode(self, chunk: ChunkSpec, stored: bytes) -> bytes:
        try:
            return decode_chunk(
                self._ref(chunk), stored, self._blob.compressor, self._blob.digester
            )
        except RafsError as exc:
            raise CorruptData(f"blob {self._blob.blob_id} chunk {chunk.index}: {exc}") from exc

    def verify(self, chunk: ChunkSpec, plain: bytes) -> None:
        try:
            verify_chunk(self._ref(chunk), plain, self._blob.digester)
        except RafsError as exc:
            raise CorruptData(f"blob {self._blob.blob_id} chunk {chunk.index}: {exc}") from exc


class CachedChunks:
    """Chunks through the persistent blob cache (owns the CachedBackend)."""

    def __init__(self, cache: CachedBackend,
                 prefetch: PrefetchSettings = PrefetchSettings()) -> None:  # noqa: B008 - frozen
        self.cache = cache
        self.backend: BlobBackend = cache
        self.prefetcher = Prefetcher(cache, prefetch)
        self._blobs: dict[int, CachedBlob] = {}

    async def _open(self, blob: BlobInfo) -> CachedBlob:
        opened = self._blobs.get(blob.index)
        if opened is None:
            count = blob.chunk_count or 0
            size = blob.uncompressed_size or 0
            if not count or not size:
                raise RafsError(f"blob {blob.blob_id}: the image records no chunk geometry")
            opened = await self.cache.open_blob(blob_id(blob.blob_id), count, size)
            self._blobs[blob.index] = opened
        return opened

    async def read_chunks(self, blob: BlobInfo, chunks: Sequence[ChunkRef]) -> list[bytes]:
        cached = await self._open(blob)
        codec = RafsCodec(blob, {c.chunk_index: c for c in chunks})
        return await cached.read_chunks([chunk_spec(c) for c in chunks], codec)

    async def prefetch(self, blob: BlobInfo, chunks: Sequence[ChunkRef]) -> None:
        cached = await self._open(blob)
        codec = RafsCodec(blob, {c.chunk_index: c for c in chunks})
        await self.prefetcher.prefetch(cached, [chunk_spec(c) for c in chunks], codec)

    def metrics(self) -> dict[str, dict[str, object]]:
        return {"backend": backend_metrics(self.cache.backend),
                "blobcache": self.cache.metrics.to_json()}

    async def aclose(self) -> None:
        await self.cache.aclose()


class DirectChunks:
    """Chunks read from a backend on every request, verified each time (owns the backend)."""

    def __init__(self, backend: BlobBackend, limiter: trio.CapacityLimiter) -> None:
        self.backend = backend
        self._limiter = limiter

    async def read_chunks(self, blob: BlobInfo, chunks: Sequence[ChunkRef]) -> list[bytes]:
        content: dict[tuple[int, int], bytes] = {}
        for read in plan_reads(chunks):
            data = await self.backend.read_range(blob_id(blob.blob_id), read.offset, read.size)
            for chunk in read.chunks:
                stored = read.chunk_bytes(data, chunk)
                plain = await trio.to_thread.run_sync(
                    decode_chunk,
                    chunk,
                    stored,
                    blob.compressor,
                    blob.digester,
                    limiter=self._limiter,
                )
                content[(chunk.compressed_offset, chunk.compressed_size)] = plain
        return [content[(c.compressed_offset, c.compressed_size)] for c in chunks]

    async def prefetch(self, blob: BlobInfo, chunks: Sequence[ChunkRef]) -> None:
        await trio.lowlevel.checkpoint()  # nowhere to keep prefetched chunks

    def metrics(self) -> dict[str, dict[str, object]]:
        return {"backend": backend_metrics(self.backend)}

    async def aclose(self) -> None:
        await self.backend.aclose()
