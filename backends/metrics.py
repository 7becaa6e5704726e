"""Counters for backend reads and the blob cache (nydusd-interface §7.4, buckets §7.6).

Plain objects updated in place by the trio task that did the work (trio is single-threaded,
so no locks); tests and the daemon's HTTP API read them. `to_json` gives nydusd's field
names so the API can return them unchanged.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Final

# Upper bounds (exclusive for sizes, inclusive for latencies) of buckets 0..6; bucket 7 is
# everything larger (§7.6).
SIZE_BOUNDS: Final = (1 << 10, 4 << 10, 16 << 10, 64 << 10, 128 << 10, 512 << 10, 1 << 20)
LATENCY_BOUNDS_MS: Final = (1, 20, 50, 100, 500, 1000, 2000)
RECENT_REQUESTS: Final = 1024  # how many request ranges `recent` keeps for inspection


def size_bucket(size: int) -> int:
    return bisect.bisect_right(SIZE_BOUNDS, size)


def latency_bucket(millis: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, millis)


@dataclass
class BackendMetrics:
    """What `/api/v1/metrics/backend` reports, plus the last request ranges."""

    backend_type: str
    read_count: int = 0
    read_errors: int = 0
    read_amount_total: int = 0  # bytes
    read_cumulative_latency_millis_total: float = 0.0
    read_count_block_size_dist: list[int] = field(default_factory=lambda: [0] * 8)
    read_cumulative_latency_millis_dist: list[float] = field(default_factory=lambda: [0.0] * 8)
    read_latency_sizes_dist: list[list[int]] = field(
        default_factory=lambda: [[0] * 8 for _ in range(8)])
    # (blob_id, offset, size) of the most recent requests: lets tests prove which ranges
    # went over the wire; bounded so a long-running daemon does not grow.
    recent: deque[tuple[str, int, int]] = field(
        default_factory=lambda: deque(maxlen=RECENT_REQUESTS))

    def record(self, blob: str, offset: int, size: int, seconds: float, ok: bool) -> None:
        """Account one backend read of `size` bytes that took `seconds`."""
        millis = seconds * 1000.0
        self.read_count += 1
        self.recent.append((blob, offset, size))
        if not ok:
            self.read_errors += 1
            return
        sb, lb = size_bucket(size), latency_bucket(millis)
        self.read_amount_total += size
        self.read_cumulative_latency_millis_total += millis
        self.read_count_block_size_dist[sb] += 1
        self.read_cumulative_latency_millis_dist[sb] += millis
        self.read_latency_sizes_dist[sb][lb] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "backend_type": self.backend_type,
            "read_count": self.read_count,
            "read_errors": self.read_errors,
            "read_amount_total": self.read_amount_total,
            "read_cumulative_latency_millis_total": int(self.read_cumulative_latency_millis_total),
            "read_cumulative_latency_millis_dist": [
                int(v) for v in self.read_cumulative_latency_millis_dist],
            "read_count_block_size_dist": list(self.read_count_block_size_dist),
            "read_latency_sizes_dist": [list(row) for row in self.read_latency_sizes_dist],
        }


@dataclass
class CacheMetrics:
    """What `/api/v1/metrics/blobcache` reports (the subset this cache can know)."""

    store_path: str
    underlying_files: set[str] = field(default_factory=set)
    partial_hits: int = 0  # reads served partly from the cache
    whole_hits: int = 0  # reads served entirely from the cache
    total: int = 0  # reads
    chunk_hits: int = 0
    chunk_misses: int = 0
    digest_failures: int = 0  # chunks whose bytes failed verification (then refetched)
    entries_count: int = 0  # open blobs
    prefetch_data_amount: int = 0  # bytes
    prefetch_requests_count: int = 0
    prefetch_workers: int = 0
    prefetch_unmerged_chunks: int = 0
    prefetch_cumulative_time_millis: float = 0.0
    prefetch_begin_time: float = 0.0  # seconds since the epoch; 0 = never started
    prefetch_end_time: float = 0.0  # seconds since the epoch; 0 = not finished
    buffered_backend_size: int = 0
    data_all_ready: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "underlying_files": sorted(self.underlying_files),
            "store_path": self.store_path,
            "partial_hits": self.partial_hits,
            "whole_hits": self.whole_hits,
            "total": self.total,
            "entries_count": self.entries_count,
            "prefetch_data_amount": self.prefetch_data_amount,
            "prefetch_requests_count": self.prefetch_requests_count,
            "prefetch_workers": self.prefetch_workers,
            "prefetch_unmerged_chunks": self.prefetch_unmerged_chunks,
            "prefetch_cumulative_time_millis": int(self.prefetch_cumulative_time_millis),
            "prefetch_begin_time_secs": int(self.prefetch_begin_time),
            "prefetch_begin_time_millis": int(self.prefetch_begin_time * 1000) % 1000,
            "prefetch_end_time_secs": int(self.prefetch_end_time),
            "prefetch_end_time_millis": int(self.prefetch_end_time * 1000) % 1000,
            "buffered_backend_size": self.buffered_backend_size,
            "data_all_ready": self.data_all_ready,
        }
