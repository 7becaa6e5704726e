"""Blob cache over an in-memory backend: hits, single flight, merging and amplification,
wrong bytes from the backend, corrupted cache files, restart, prefetch priority."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from backends import CachedBackend, CacheSettings, CorruptData
from backends.cachefile import BlobCacheFile
from backends.prefetch import Prefetcher, PrefetchSettings, RateLimiter
from tests.support.blobstore import InMemoryBackend, ZlibSha256Codec, data_size, make_blob

CONTENTS = [bytes([i]) * (3000 + 100 * i) for i in range(8)]
BLOB, STORED, SPECS = make_blob(CONTENTS)
SIZE = data_size(SPECS)


def file_size(path: Path) -> int:
    return os.path.getsize(path)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([f.read(1)[0] ^ 0xFF]))


def make_cache(tmp_path: Path, **settings: object) -> tuple[CachedBackend, InMemoryBackend]:
    backend = InMemoryBackend({BLOB: STORED})
    cache = CachedBackend(backend, CacheSettings(work_dir=str(tmp_path), **settings),  # type: ignore[arg-type]
                          trio.CapacityLimiter(2))
    return cache, backend


async def test_miss_then_hit_and_file_layout(tmp_path: Path) -> None:
    cache, backend = make_cache(tmp_path, amplify_io=0)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE)
    codec = ZlibSha256Codec()
    assert await blob.read_chunks([SPECS[2], SPECS[1]], codec) == [CONTENTS[2], CONTENTS[1]]
    # chunks 1 and 2 are adjacent in the blob: one request
    assert list(backend.metrics.recent) == [(BLOB, SPECS[1].compressed_offset,
                                             SPECS[2].compressed_end - SPECS[1].compressed_offset)]
    assert await blob.read_chunks([SPECS[1]], codec) == [CONTENTS[1]]
    assert backend.metrics.read_count == 1
    assert cache.metrics.whole_hits == 1 and cache.metrics.chunk_misses == 2
    names = sorted(os.listdir(tmp_path))
    assert names == [f"{BLOB}.blob.data", f"{BLOB}.blob.data.chunk_map"]
    assert file_size(tmp_path / names[0]) == SIZE
    raw = (tmp_path / names[1]).read_bytes()
    assert len(raw) == 4096 + 1 and raw[4096] == 0b0110_0000
    data = (tmp_path / names[0]).read_bytes()
    spec = SPECS[2]
    assert data[spec.uncompressed_offset:spec.uncompressed_offset + spec.uncompressed_size] == \
        CONTENTS[2]  # stored uncompressed at the uncompressed offset
    await cache.aclose()
    assert backend.closed


async def test_single_flight(tmp_path: Path) -> None:
    cache, backend = make_cache(tmp_path)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE)
    backend.gate = trio.Event()
    results: list[list[bytes]] = []

    async def reader() -> None:
        results.append(await blob.read_chunks([SPECS[3]], ZlibSha256Codec()))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        backend.gate.set()
    assert results == [[CONTENTS[3]]] * 5
    assert backend.metrics.read_count == 1
    await cache.aclose()


async def test_amplification_uses_table(tmp_path: Path) -> None:
    cache, backend = make_cache(tmp_path, amplify_io=1 << 20)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE, table=SPECS)
    await blob.read_chunks([SPECS[0]], ZlibSha256Codec())
    assert list(backend.metrics.recent) == [(BLOB, 0, len(STORED))]
    assert blob.file.all_ready
    assert cache.metrics.data_all_ready
    header = (tmp_path / f"{BLOB}.blob.data.chunk_map").read_bytes()[:16]
    assert header[12:16] == bytes.fromhex("50414d4d")
    await cache.aclose()


async def test_wrong_bytes_refetched_once_then_eio(tmp_path: Path) -> None:
    cache, backend = make_cache(tmp_path, amplify_io=0)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE)
    flips = 1

    def corrupt_once(offset: int, data: bytes) -> bytes:
        nonlocal flips
        if flips:
            flips -= 1
            return bytes(len(data))
        return data

    backend.mangle = corrupt_once
    assert await blob.read_chunks([SPECS[4]], ZlibSha256Codec()) == [CONTENTS[4]]
    assert backend.metrics.read_count == 2 and cache.metrics.digest_failures == 1
    backend.mangle = lambda offset, data: data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(CorruptData, match=f"blob {BLOB} chunk 5") as info:
        await blob.read_chunks([SPECS[5]], ZlibSha256Codec())
    assert info.value.errno == 5  # EIO
    assert not blob.file.present(5)
    await cache.aclose()


async def test_corrupted_cache_file_detected_with_validate(tmp_path: Path) -> None:
    cache, backend = make_cache(tmp_path, validate=True, amplify_io=0)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE)
    await blob.read_chunks([SPECS[6]], ZlibSha256Codec())
    flip_byte(tmp_path / f"{BLOB}.blob.data", SPECS[6].uncompressed_offset + 7)
    assert await blob.read_chunks([SPECS[6]], ZlibSha256Codec()) == [CONTENTS[6]]
    assert backend.metrics.read_count == 2 and cache.metrics.digest_failures == 1
    await cache.aclose()


async def test_restart_reuses_cache_and_heals_bad_map(tmp_path: Path) -> None:
    cache, backend = make_cache(tmp_path, amplify_io=0)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE)
    await blob.read_chunks(SPECS[:3], ZlibSha256Codec())
    await cache.aclose()
    cache, backend = make_cache(tmp_path, amplify_io=0)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE)
    assert await blob.read_chunks(SPECS[:3], ZlibSha256Codec()) == CONTENTS[:3]
    assert backend.metrics.read_count == 0
    await cache.aclose()
    map_path = tmp_path / f"{BLOB}.blob.data.chunk_map"
    map_path.write_bytes(map_path.read_bytes()[:-1])  # wrong size: not trusted
    cache, backend = make_cache(tmp_path, amplify_io=0)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE)
    assert blob.file.was_reset and blob.file.count_present() == 0
    assert await blob.read_chunks(SPECS[:3], ZlibSha256Codec()) == CONTENTS[:3]
    assert backend.metrics.read_count == 1
    await cache.aclose()


def test_oversized_data_file_is_reset(tmp_path: Path) -> None:
    (tmp_path / f"{BLOB}.blob.data").write_bytes(b"x" * (SIZE + 1))
    file = BlobCacheFile.open(str(tmp_path), BLOB, len(SPECS), SIZE)
    assert os.path.getsize(tmp_path / f"{BLOB}.blob.data") == SIZE
    assert file.read(0, 4) == bytes(4)
    file.close()


async def test_prefetch_waits_for_demand_and_paces(tmp_path: Path,
                                                  autojump_clock: trio.testing.MockClock
                                                  ) -> None:
    cache, backend = make_cache(tmp_path, amplify_io=0)
    blob = await cache.open_blob(BLOB, len(SPECS), SIZE, table=SPECS)
    prefetcher = Prefetcher(cache, PrefetchSettings(enable=True, threads_count=2,
                                                    merging_size=SPECS[1].compressed_end,
                                                    bandwidth_rate=1000))
    backend.gate = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(blob.read_chunks, [SPECS[7]], ZlibSha256Codec())
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(prefetcher.prefetch_blob, blob, ZlibSha256Codec())
        await trio.testing.wait_all_tasks_blocked()
        # the guest read is in flight: prefetch has not sent anything
        assert list(backend.metrics.recent) == [(BLOB, SPECS[7].compressed_offset,
                                                 SPECS[7].compressed_size)]
        started = trio.current_time()
        backend.gate.set()
    assert blob.file.all_ready
    assert prefetcher.stats.errors == 0 and prefetcher.stats.runs >= 4
    # bandwidth_rate 1000 B/s over the remaining bytes takes simulated seconds
    assert trio.current_time() - started >= (len(STORED) - SPECS[7].compressed_size
                                             - SPECS[1].compressed_end) / 1000
    assert cache.metrics.prefetch_data_amount == len(STORED) - SPECS[7].compressed_size
    await cache.aclose()


async def test_rate_limiter_unlimited_does_not_sleep(
        autojump_clock: trio.testing.MockClock) -> None:
    limiter = RateLimiter(0)
    start = trio.current_time()
    await limiter.acquire(1 << 30)
    assert trio.current_time() == start
