"""The blob cache: a backend wrapper that keeps verified, uncompressed chunks on local disk.

`CachedBackend` is itself a BlobBackend (`read_range` passes straight through, for the raw
reads RAFS needs such as blob meta), plus `open_blob`, which returns a `CachedBlob` whose
`read_chunks` is the chunk-granular path:

    caller (RAFS) --ChunkSpec list + ChunkCodec--> CachedBlob.read_chunks --> verified bytes

The cache knows nothing about RAFS: a `ChunkSpec` gives a chunk's place in the blob (stored
range) and in the uncompressed space (cache file range), and the caller's `ChunkCodec`
turns stored bytes into verified uncompressed bytes (decompress + digest check) or raises
CorruptData. Cached data is stored uncompressed, as nydusd does (`<blob>.blob.data`).

Invariants:
* A chunk is served only after `codec.decode` accepted its bytes (or, for cache hits, after
  `codec.verify` did when `validate` is set). A chunk that fails is fetched once more on its
  own; failing again raises CorruptData (EIO) naming the blob and chunk.
* Bits in the chunk map are set only after the bytes are durable (`cachefile`).
* Single flight: a chunk is fetched by at most one task at a time; others wait on its Event
  and then look again (so a failed fetch is retried by the waiter, not reported twice).
* Misses are merged into few range requests: adjacent chunks join one run up to
  `amplify_io` bytes, and with the blob's chunk table the run is extended with following
  missing chunks (nydusd's read amplification).
* Demand reads have priority: `demand_idle` lets prefetch workers wait while any guest
  read is fetching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from . import rangemap
from .base import BlobBackend, BlobId
from .cachefile import BlobCacheFile
from .errors import BackendError, CorruptData
from .metrics import CacheMetrics

DEFAULT_AMPLIFY_IO: Final = 1 << 20  # bytes (v1 `amplify_io`, v2 `rafs.batch_size`)


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """Where one chunk lives: in the blob (stored) and in the cache file (uncompressed)."""

    index: int  # chunk index in the blob: its bit in the chunk map
    compressed_offset: int  # bytes: stored chunk's position in the blob
    compressed_size: int  # bytes stored
    uncompressed_offset: int  # bytes: position in the blob's uncompressed space
    uncompressed_size: int  # bytes of content
    digest: bytes | None = None  # opaque to the cache; for the codec

    @property
    def compressed_end(self) -> int:
        return self.compressed_offset + self.compressed_size


class ChunkCodec(Protocol):
    """The caller's knowledge of chunk contents; both methods are called in worker threads."""

    def decode(self, chunk: ChunkSpec, stored: bytes) -> bytes:
        """Verified uncompressed content from stored bytes; raise CorruptData if wrong."""
        ...

    def verify(self, chunk: ChunkSpec, plain: bytes) -> None:
        """Raise CorruptData if cached uncompressed bytes are not the chunk's content."""
        ...


@dataclass(frozen=True, slots=True)
class CacheSettings:
    work_dir: str = "."
    validate: bool = False  # re-verify cache hits (cache.validate / digest_validate)
    amplify_io: int = DEFAULT_AMPLIFY_IO  # bytes; 0 = no amplification, no merging cap


class CachedBackend:
    """A BlobBackend plus a persistent, verified chunk cache for each opened blob.

    Owns `backend` (closed by `aclose`) and every cache file it opens. Blocking file work goes
    through `limiter`, shared with the rest of the daemon.
    """

    def __init__(self, backend: BlobBackend, settings: CacheSettings,
                 limiter: trio.CapacityLimiter) -> None:
        self.backend = backend
        self.settings = settings
        self.limiter = limiter
        self.metrics = CacheMetrics(store_path=settings.work_dir)
        self._blobs: dict[BlobId, CachedBlob] = {}
        self._open_lock = trio.Lock()
        self._demand = 0
        self.demand_idle = trio.Event()
        self.demand_idle.set()

    async def blob_size(self, blob_id: BlobId) -> int:
        return await self.backend.blob_size(blob_id)

    async def read_range(self, blob_id: BlobId, offset: int, size: int) -> bytes:
        return await self.backend.read_range(blob_id, offset, size)

    async def open_blob(self, blob_id: BlobId, chunk_count: int, uncompressed_size: int,
                        table: Sequence[ChunkSpec] = ()) -> CachedBlob:
        """The cache of one blob, created on first use and shared afterwards.

        Args:
            chunk_count: chunks in the blob (size of the chunk map).
            uncompressed_size: bytes of the blob's uncompressed space (data file size).
            table: optional full chunk list, enabling read amplification and whole-blob
                prefetch.
        """
        async with self._open_lock:
            blob = self._blobs.get(blob_id)
            if blob is None:
                file = await trio.to_thread.run_sync(
                    BlobCacheFile.open, self.settings.work_dir, blob_id, chunk_count,
                    uncompressed_size, limiter=self.limiter)
                blob = self._blobs[blob_id] = CachedBlob(self, blob_id, file, table)
                self.metrics.underlying_files.add(file.name)
                self.metrics.entries_count = len(self._blobs)
            elif (blob.file.chunk_count, blob.file.data_size) != (chunk_count, uncompressed_size):
                raise BackendError(f"blob {blob_id} reopened with a different geometry")
            return blob

    async def aclose(self) -> None:
        blobs, self._blobs = self._blobs, {}
        for blob in blobs.values():
            blob.file.close()
        await self.backend.aclose()

    def _demand_started(self) -> None:
        self._demand += 1
        if self._demand == 1:
            self.demand_idle = trio.Event()

    def _demand_ended(self) -> None:
        self._demand -= 1
        if self._demand == 0:
            self.demand_idle.set()


class CachedBlob:
    """Chunk reads of one blob through its cache files."""

    def __init__(self, owner: CachedBackend, blob_id: BlobId, file: BlobCacheFile,
                 table: Sequence[ChunkSpec]) -> None:
        self._owner = owner
        self.blob_id = blob_id
        self.file = file
        self.table = sorted(table, key=lambda c: c.compressed_offset)
        self._inflight: dict[int, trio.Event] = {}

    def missing(self, chunks: Sequence[ChunkSpec]) -> list[ChunkSpec]:
        """Chunks neither cached nor being fetched, deduplicated, by blob offset."""
        unique = {c.index: c for c in chunks}
        return sorted((c for c in unique.values()
                       if not self.file.present(c.index) and c.index not in self._inflight),
                      key=lambda c: c.compressed_offset)

    async def read_chunks(self, chunks: Sequence[ChunkSpec], codec: ChunkCodec) -> list[bytes]:
        """The verified uncompressed content of each chunk, in the order given.

        Raises:
            CorruptData: a chunk failed verification twice (EIO, names blob and chunk).
            BackendError: the backend failed after its retries.
        """
        metrics = self._owner.metrics
        metrics.total += 1
        results: dict[int, bytes] = {}
        pending = list({c.index: c for c in chunks}.values())
        misses = 0
        self._owner._demand_started()
        try:
            while pending:
                hits = [c for c in pending
                        if c.index not in self._inflight and self.file.present(c.index)]
                results.update(await self._read_cached(hits, codec))
                own = self.missing([c for c in pending if c.index not in results])
                misses += len(own)
                if own:
                    fetched = await self._fetch(own, codec, self._owner.settings.amplify_io,
                                                amplify=True)
                    results.update((c.index, fetched[c.index]) for c in own)
                for c in pending:
                    event = self._inflight.get(c.index)
                    if c.index not in results and event is not None:
                        await event.wait()
                pending = [c for c in pending if c.index not in results]
        finally:
            self._owner._demand_ended()
        metrics.chunk_hits += len(results) - misses
        metrics.chunk_misses += misses
        if misses == 0:
            metrics.whole_hits += 1
        elif misses < len(results):
            metrics.partial_hits += 1
        return [results[c.index] for c in chunks]

    async def _read_cached(self, chunks: list[ChunkSpec], codec: ChunkCodec) -> dict[int, bytes]:
        if not chunks:
            return {}
        validate = self._owner.settings.validate

        def work() -> tuple[dict[int, bytes], list[int]]:
            good: dict[int, bytes] = {}
            bad: list[int] = []
            for c in chunks:
                data = self.file.read(c.uncompressed_offset, c.uncompressed_size)
                try:
                    if validate:
                        codec.verify(c, data)
                    good[c.index] = data
                except CorruptData:
                    bad.append(c.index)
            return good, bad

        good, bad = await trio.to_thread.run_sync(work, limiter=self._owner.limiter)
        if bad:
            # The cache file lied (disk corruption, tampering): forget and refetch.
            self._owner.metrics.digest_failures += len(bad)
            self.file.mark_absent(bad)
        return good

    def _amplify(self, chunks: list[ChunkSpec], limit: int) -> list[ChunkSpec]:
        """`chunks` plus the missing chunks that follow the last one, up to `limit` bytes."""
        if not self.table or not chunks or limit <= 0:
            return chunks
        start = chunks[0].compressed_offset
        extra: list[ChunkSpec] = []
        wanted = {c.index for c in chunks}
        for c in self.table:
            if c.compressed_offset < chunks[-1].compressed_end or c.index in wanted:
                continue
            if c.compressed_end - start > limit:
                break
            if self.file.present(c.index) or c.index in self._inflight:
                break  # stop at the first cached chunk: keep the run contiguous
            extra.append(c)
        return chunks + extra

    async def fetch(self, chunks: list[ChunkSpec], codec: ChunkCodec, limit: int) -> None:
        """Fetch and cache `chunks` (missing, not in flight) in runs of `limit` bytes."""
        await self._fetch(self.missing(chunks), codec, limit, amplify=False)

    async def _fetch(self, chunks: list[ChunkSpec], codec: ChunkCodec, limit: int, *,
                     amplify: bool) -> dict[int, bytes]:
        """Fetch, verify and cache `chunks` (all missing, none in flight); returns content."""
        if amplify:
            chunks = self._amplify(chunks, limit)
        events = {c.index: trio.Event() for c in chunks}
        self._inflight.update(events)
        try:
            runs = rangemap.merge_runs(chunks, [c.compressed_offset for c in chunks],
                                       [c.compressed_end for c in chunks], max_gap=0,
                                       max_size=limit if limit > 0 else 1 << 62)
            results: dict[int, bytes] = {}
            for run in runs:
                results.update(await self._fetch_run(run, codec))
            return results
        finally:
            for index, event in events.items():
                del self._inflight[index]
                event.set()

    async def _fetch_run(self, run: list[ChunkSpec], codec: ChunkCodec) -> dict[int, bytes]:
        start = run[0].compressed_offset
        end = max(c.compressed_end for c in run)
        data = await self._owner.backend.read_range(self.blob_id, start, end - start)
        stored = {c.index: data[c.compressed_offset - start:c.compressed_end - start]
                  for c in run}
        plain, bad = await self._decode(run, stored, codec)
        for c in bad:
            # Wrong bytes from the backend (or a proxy): refetch this chunk once, alone.
            self._owner.metrics.digest_failures += 1
            again = await self._owner.backend.read_range(self.blob_id, c.compressed_offset,
                                                         c.compressed_size)
            fixed, still_bad = await self._decode([c], {c.index: again}, codec)
            if still_bad:
                raise CorruptData(f"blob {self.blob_id} chunk {c.index} (stored at "
                                  f"{c.compressed_offset}+{c.compressed_size}): content does "
                                  f"not verify, even after a refetch")
            plain.update(fixed)
        by_index = {c.index: c for c in run}
        pieces = [(by_index[i].uncompressed_offset, content) for i, content in plain.items()]
        await trio.to_thread.run_sync(self.file.write_durable, pieces,
                                      limiter=self._owner.limiter)
        self.file.mark_present(list(plain))
        self._owner.metrics.data_all_ready = all(
            b.file.all_ready for b in self._owner._blobs.values())
        return plain

    async def _decode(self, run: list[ChunkSpec], stored: dict[int, bytes],
                      codec: ChunkCodec) -> tuple[dict[int, bytes], list[ChunkSpec]]:
        def work() -> tuple[dict[int, bytes], list[ChunkSpec]]:
            plain: dict[int, bytes] = {}
            bad: list[ChunkSpec] = []
            for c in run:
                try:
                    content = codec.decode(c, stored[c.index])
                except CorruptData:
                    bad.append(c)
                    continue
                if len(content) != c.uncompressed_size:
                    bad.append(c)
                    continue
                plain[c.index] = content
            return plain, bad

        return await trio.to_thread.run_sync(work, limiter=self._owner.limiter)
