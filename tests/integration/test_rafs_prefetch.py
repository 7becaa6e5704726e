"""RafsFilesystem prefetch and verification, over an image built by our builder.

Storage is the localfs backend wrapped in the blob cache, so the backend's request log
(`metrics.recent`) says exactly which stored ranges were fetched. Covers: a `prefetch_files`
list (only those files' chunks, then reads are pure cache hits), the bootstrap's prefetch
table (directories expand), whole-image prefetch (`prefetch_all`, and the list ["/"]),
relative paths refused, guest reads not held up by a slow, rate-limited prefetch, metrics
in nydusd's shapes, and v6 chunks whose digests live only in the blob's digest array.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import trio
import trio.testing

from backends.cache import CachedBackend, CacheSettings
from backends.config import LocalFsConfig
from backends.localfs import LocalFsBackend
from backends.prefetch import PrefetchSettings
from rafs import BlobMeta, Image, Ino, open_image
from rafs.v6 import layout as v6_layout
from tests.support.lazyimage import BuiltImage, chunk_map_bits, make_image
from vhostfs.errors import FsError
from vhostfs.fs.chunks import CachedChunks
from vhostfs.fs.factory import open_rafs
from vhostfs.fs.rafsfs import RafsFilesystem
from vhostfs.fs.rafsprefetch import PrefetchPlan
from vhostfs.fuse.filesystem import ROOT_INO, Context, FileHandle

CTX = Context(0, 0, 0)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return make_image(tmp_path_factory.mktemp("lazy"))


def mount(img: BuiltImage, work: Path, plan: PrefetchPlan, *, bootstrap: Image | None = None,
          rate: int = 0) -> tuple[RafsFilesystem, LocalFsBackend, CachedBackend]:
    limiter = trio.CapacityLimiter(4)
    backend = LocalFsBackend(LocalFsConfig(dir=str(img.blob_path.parent)), limiter)
    cache = CachedBackend(backend, CacheSettings(work_dir=str(work), amplify_io=0), limiter)
    settings = PrefetchSettings(enable=plan.enable, threads_count=2, merging_size=256 << 10,
                                bandwidth_rate=rate)
    fs = RafsFilesystem(bootstrap or open_image(img.bootstrap), CachedChunks(cache, settings),
                        prefetch=plan)
    return fs, backend, cache


async def read_path(fs: RafsFilesystem, path: str) -> bytes:
    ino = ROOT_INO
    for part in path.strip("/").split("/"):
        ino = (await fs.lookup(CTX, ino, part.encode())).ino
    size = (await fs.getattr(CTX, ino, None))[0].size
    out = bytearray(size)
    n = await fs.read(CTX, ino, FileHandle(0), 0, [memoryview(out)])
    return bytes(out[:n])


def fetched(backend: LocalFsBackend) -> set[tuple[int, int]]:
    return {(offset, offset + size) for _, offset, size in backend.metrics.recent}


def covered(ranges: set[tuple[int, int]], wanted: set[tuple[int, int]]) -> bool:
    return all(any(s <= ws and we <= e for s, e in ranges) for ws, we in wanted)


async def test_prefetch_files_fetches_only_their_chunks(image: BuiltImage, tmp_path: Path) -> None:
    files = ("/bin/app", "/etc/config.toml")
    fs, backend, cache = mount(image, tmp_path, PrefetchPlan(enable=True, files=files))
    await fs.prefetch()
    wanted = image.ranges(*files)
    got = fetched(backend)
    assert covered(got, wanted)
    # nothing outside those files' chunks (merged runs are unions of adjacent chunks)
    assert sum(e - s for s, e in got) == sum(e - s for s, e in wanted)
    assert cache.metrics.prefetch_requests_count >= 1
    requests = backend.metrics.read_count
    for path in files:
        assert await read_path(fs, path) == image.files[path]
    assert backend.metrics.read_count == requests  # served from the cache
    assert cache.metrics.chunk_misses == 0
    assert chunk_map_bits(tmp_path, image.blob_id) == len(wanted)
    await fs.chunks.aclose()


async def test_directory_in_the_bootstrap_prefetch_table(image: BuiltImage,
                                                         tmp_path: Path) -> None:
    """Our builder writes no prefetch table, so the table is supplied by a subclass."""
    base = open_image(image.bootstrap)
    data_dir = base.lookup(base.lookup(base.root_ino, b"share").ino, b"data")  # type: ignore[union-attr]
    assert data_dir is not None

    class WithTable(Image):
        @property
        def prefetch_inos(self) -> tuple[Ino, ...]:
            return (Ino(data_dir.ino),)

    table_image = WithTable(base._b)
    fs, backend, _ = mount(image, tmp_path, PrefetchPlan(enable=True, prefetch_all=True),
                           bootstrap=table_image)
    await fs.prefetch()
    wanted = image.ranges("/share/data/blob1.bin", "/share/data/blob2.bin")
    assert covered(fetched(backend), wanted)
    # the table restricts the prefetch: prefetch_all does not add the rest of the image
    assert sum(e - s for s, e in fetched(backend)) == sum(e - s for s, e in wanted)
    await fs.chunks.aclose()


@pytest.mark.parametrize("plan", [PrefetchPlan(enable=True, prefetch_all=True),
                                  PrefetchPlan(enable=True, files=("/",))],
                         ids=["prefetch_all", "list-is-root"])
async def test_whole_image_prefetch(image: BuiltImage, tmp_path: Path,
                                    plan: PrefetchPlan) -> None:
    fs, backend, _ = mount(image, tmp_path, plan)
    await fs.prefetch()
    every_chunk = image.ranges(*image.files)
    assert covered(fetched(backend), every_chunk)
    assert chunk_map_bits(tmp_path, image.blob_id) == len(every_chunk)
    metrics = fs.metrics()
    assert metrics["blobcache"]["data_all_ready"] is True
    assert metrics["blobcache"]["prefetch_data_amount"] == sum(e - s for s, e in every_chunk)
    assert metrics["blobcache"]["prefetch_end_time_secs"] >= \
        metrics["blobcache"]["prefetch_begin_time_secs"] > 0
    assert metrics["backend"]["backend_type"] == "localfs"
    assert metrics["backend"]["read_amount_total"] == sum(e - s for s, e in every_chunk)
    json.dumps(metrics)  # what the HTTP API serves
    await fs.chunks.aclose()


async def test_prefetch_disabled_fetches_nothing(image: BuiltImage, tmp_path: Path) -> None:
    fs, backend, _ = mount(image, tmp_path, PrefetchPlan(enable=False, prefetch_all=True))
    await fs.prefetch()
    assert fs.prefetch_done.is_set()
    assert backend.metrics.read_count == 0
    await fs.chunks.aclose()


def test_relative_prefetch_path_refused(image: BuiltImage, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        open_rafs(str(image.bootstrap), localfs_dir=str(tmp_path),
                  limiter=trio.CapacityLimiter(1), prefetch_files=["bin/app"])


async def test_open_rafs_takes_prefetch_settings_from_the_config(image: BuiltImage,
                                                                 tmp_path: Path) -> None:
    config = {"device": {"backend": {"type": "localfs",
                                     "config": {"dir": str(image.blob_path.parent)}},
                         "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path)}}},
              "mode": "direct",
              "fs_prefetch": {"enable": True, "threads_count": 3, "merging_size": 131072}}
    fs = open_rafs(str(image.bootstrap), config=json.dumps(config),
                   limiter=trio.CapacityLimiter(2), prefetch_files=["/lib"])
    await fs.prefetch()
    assert fs.metrics()["blobcache"]["prefetch_workers"] == 3
    assert chunk_map_bits(tmp_path, image.blob_id) == len(
        image.ranges("/lib/libbig.so", "/lib/libsmall.so"))
    await fs.chunks.aclose()


async def test_guest_reads_go_first(image: BuiltImage, tmp_path: Path,
                                    autojump_clock: trio.testing.MockClock) -> None:
    """Prefetch at 256 KiB/s needs ~17 s for the image; a read meanwhile takes no time."""
    fs, _, _ = mount(image, tmp_path, PrefetchPlan(enable=True, files=("/",)), rate=256 << 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.prefetch)
        await trio.sleep(1.0)  # mock time: let the prefetch get going
        start = trio.current_time()
        assert await read_path(fs, "/share/doc/README") == image.files["/share/doc/README"]
        assert trio.current_time() - start < 1.5  # at most one prefetch run ahead of it
        assert not fs.prefetch_done.is_set()
    assert fs.prefetch_done.is_set()
    assert trio.current_time() > 10
    await fs.chunks.aclose()


def strip_digests(bootstrap: bytes) -> bytes:
    """The bootstrap with every chunk-table digest zeroed (as if it kept none)."""
    ext = v6_layout.ExtSuperBlock.unpack_from(bootstrap, v6_layout.EXT_SUPERBLOCK_OFFSET)
    buf = bytearray(bootstrap)
    for pos in range(ext.chunk_table_offset, ext.chunk_table_offset + ext.chunk_table_size, 80):
        buf[pos:pos + 32] = bytes(32)
    return bytes(buf)


async def test_digests_from_the_blob_digest_array(image: BuiltImage, tmp_path: Path) -> None:
    stripped = Image.from_bytes(strip_digests(image.bootstrap.read_bytes()))
    ino = stripped.lookup(stripped.root_ino, b"etc")
    assert ino is not None
    assert all(c.digest is None for c in stripped.file_chunks(
        stripped.lookup(ino.ino, b"config.toml").ino, 0, 3000))  # type: ignore[union-attr]
    (tmp_path / "a").mkdir()
    fs, backend, _ = mount(image, tmp_path / "a", PrefetchPlan(), bootstrap=stripped)
    data = await read_path(fs, "/lib/libsmall.so")
    assert hashlib.sha256(data).hexdigest() == image.sha256("/lib/libsmall.so")
    # the blob meta, the ToC and the digest array were read, then the chunks
    assert backend.metrics.read_count > len(image.chunks("/lib/libsmall.so"))
    await fs.chunks.aclose()


async def test_wrong_chunk_bytes_with_digests_from_the_blob(image: BuiltImage,
                                                             tmp_path: Path) -> None:
    """A blob whose chunk was altered: the digest from its digest array catches it."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (tmp_path / "cache").mkdir()
    victim = image.chunks("/bin/app")[1]
    data = bytearray(image.blob_path.read_bytes())
    data[victim.compressed_offset + 100] ^= 0xFF
    (blobs / image.blob_id).write_bytes(data)
    altered = BuiltImage(image.source, image.bootstrap, blobs / image.blob_id, image.blob_id,
                         image.files)
    stripped = Image.from_bytes(strip_digests(image.bootstrap.read_bytes()))
    fs, _, _ = mount(altered, tmp_path / "cache", PrefetchPlan(), bootstrap=stripped)
    with pytest.raises(Exception) as caught:
        await read_path(fs, "/bin/app")
    assert getattr(caught.value, "errno", None) == errno.EIO
    assert f"chunk {victim.chunk_index}" in str(caught.value)
    assert await read_path(fs, "/etc/config.toml") == image.files["/etc/config.toml"]
    await fs.chunks.aclose()


async def test_chunks_without_any_digest_are_refused(image: BuiltImage, tmp_path: Path) -> None:
    """No digest in the bootstrap and none from the blob: nothing unverified is served."""

    class NoDigestsAnywhere(Image):
        def attach_blob_meta(self, meta: BlobMeta) -> None:
            pass  # as if the blob carried no digest array either

    stripped = NoDigestsAnywhere(Image.from_bytes(strip_digests(image.bootstrap.read_bytes()))._b)
    fs, backend, _ = mount(image, tmp_path, PrefetchPlan(), bootstrap=stripped)
    with pytest.raises(FsError) as caught:
        await read_path(fs, "/etc/config.toml")
    assert caught.value.errno == errno.EIO
    assert "unverified" in str(caught.value)
    chunk_reads = [r for r in backend.metrics.recent if r[2] == 3000]
    assert chunk_reads == []  # refused before the chunk was even fetched
    await fs.chunks.aclose()
