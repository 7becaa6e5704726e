"""Background prefetch into the blob cache (nydusd's `fs_prefetch` / `cache.prefetch`).

What to prefetch is the caller's decision (RAFS resolves the bootstrap prefetch table or a
`prefetch_files` list to chunks, or asks for whole blobs); this module only moves bytes:

* missing chunks are grouped into runs of at most `merging_size` bytes,
* `threads_count` workers fetch runs concurrently,
* `bandwidth_rate` bytes/s (0 = unlimited) caps the total through a `RateLimiter`,
* before each request a worker waits until no guest read is fetching (`demand_idle`), so
  prefetch never competes with the guest for the backend,
* failures are counted and skipped (prefetch is best effort; a later demand read retries).

`RateLimiter` reserves time slots on trio's clock, so tests drive it with MockClock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio

from . import rangemap
from .cache import CachedBackend, CachedBlob, ChunkCodec, ChunkSpec
from .errors import BackendError

DEFAULT_MERGING_SIZE: Final = 1 << 20  # bytes


@dataclass(frozen=True, slots=True)
class PrefetchSettings:
    enable: bool = False
    threads_count: int = 8
    merging_size: int = DEFAULT_MERGING_SIZE  # bytes per merged backend request
    bandwidth_rate: int = 0  # bytes/s, 0 = unlimited
    prefetch_all: bool = True  # v1 default; v2 `prefetch_all` defaults to false
    stream_prefetch: bool = False  # accepted; range-less whole-blob GETs are not implemented


class RateLimiter:
    """Token-bucket-like pacing: `acquire(n)` returns once n bytes fit the rate."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._next_free = 0.0  # trio clock time at which the next byte may go

    async def acquire(self, amount: int) -> None:
        if self._rate <= 0:
            await trio.lowlevel.checkpoint()
            return
        now = trio.current_time()
        start = max(now, self._next_free)
        self._next_free = start + amount / self._rate
        await trio.sleep_until(start)


@dataclass
class PrefetchStats:
    runs: int = 0
    bytes: int = 0  # stored (compressed) bytes requested
    errors: int = 0


class Prefetcher:
    """Runs prefetch jobs for one CachedBackend with the configured workers and pacing."""

    def __init__(self, cache: CachedBackend, settings: PrefetchSettings) -> None:
        self._cache = cache
        self._settings = settings
        self._limiter = RateLimiter(settings.bandwidth_rate)
        self.stats = PrefetchStats()

    async def prefetch(self, blob: CachedBlob, chunks: Sequence[ChunkSpec],
                       codec: ChunkCodec) -> None:
        """Bring `chunks` into the cache; returns when all runs were tried."""
        metrics = self._cache.metrics
        started = time.time()
        if not metrics.prefetch_begin_time:
            metrics.prefetch_begin_time = started
        try:
            await self._prefetch(blob, chunks, codec)
        finally:
            metrics.prefetch_end_time = time.time()
            metrics.prefetch_cumulative_time_millis += (metrics.prefetch_end_time - started) * 1e3

    async def _prefetch(self, blob: CachedBlob, chunks: Sequence[ChunkSpec],
                        codec: ChunkCodec) -> None:
        missing = blob.missing(chunks)
        runs = rangemap.merge_runs(missing, [c.compressed_offset for c in missing],
                                   [c.compressed_end for c in missing], max_gap=0,
                                   max_size=max(self._settings.merging_size, 1))
        metrics = self._cache.metrics
        metrics.prefetch_unmerged_chunks += len(missing)
        send, receive = trio.open_memory_channel[list[ChunkSpec]](len(runs))
        for run in runs:
            send.send_nowait(run)
        send.close()
        workers = max(1, min(self._settings.threads_count, len(runs)))
        metrics.prefetch_workers = workers
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(self._worker, blob, receive.clone(), codec)
        receive.close()

    async def prefetch_blob(self, blob: CachedBlob, codec: ChunkCodec) -> None:
        """Prefetch every chunk of the blob's table (whole-blob prefetch)."""
        await self.prefetch(blob, blob.table, codec)

    async def _worker(self, blob: CachedBlob, runs: trio.MemoryReceiveChannel[list[ChunkSpec]],
                      codec: ChunkCodec) -> None:
        async with runs:
            async for run in runs:
                await self._cache.demand_idle.wait()
                todo = blob.missing(run)  # a guest read may have fetched some meanwhile
                if not todo:
                    continue
                size = todo[-1].compressed_end - todo[0].compressed_offset
                await self._limiter.acquire(size)
                await self._cache.demand_idle.wait()
                todo = blob.missing(todo)
                if not todo:
                    continue
                self.stats.runs += 1
                self.stats.bytes += size
                self._cache.metrics.prefetch_requests_count += 1
                self._cache.metrics.prefetch_data_amount += size
                try:
                    await blob.fetch(todo, codec, self._settings.merging_size)
                except BackendError:
                    self.stats.errors += 1
