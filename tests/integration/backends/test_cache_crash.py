"""The blob cache survives `kill -9` at the worst moments: a subprocess fills the cache from
a localfs backend and SIGKILLs itself (a) half-way through writing chunk bytes, (b) after
the bytes are durable but before their bits are set, (c) right after setting bits. The
restarted cache never returns a wrong byte and refetches exactly what is not recorded."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio

from backends import CachedBackend, CacheSettings, LocalFsBackend
from backends.config import LocalFsConfig
from tests.support.blobstore import ZlibSha256Codec, data_size, make_blob

CONTENTS = [bytes([65 + i]) * (5000 + i) for i in range(6)]
BLOB, STORED, SPECS = make_blob(CONTENTS)

ROOT = Path(__file__).resolve().parents[3]


def file_size(path: Path) -> int:
    return os.path.getsize(path)


CHILD = r"""
import os, signal, sys
import trio
from backends import CachedBackend, CacheSettings, LocalFsBackend
from backends.cachefile import BlobCacheFile
from backends.config import LocalFsConfig
from tests.support.blobstore import ZlibSha256Codec, data_size, make_blob
from tests.integration.backends.test_cache_crash import BLOB, SPECS

mode, blob_dir, work_dir = sys.argv[1:4]
write, mark = BlobCacheFile.write_durable, BlobCacheFile.mark_present
calls = 0

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def write_durable(self, pieces):
    global calls
    calls += 1
    if calls == 2 and mode == "mid-data":
        offset, data = pieces[0]
        os.pwrite(self._data_fd, data[: len(data) // 2], offset)
        os.fdatasync(self._data_fd)
        die()
    write(self, pieces)
    if calls == 2 and mode == "after-data":
        die()

def mark_present(self, indices):
    mark(self, indices)
    if calls == 2 and mode == "after-bit":
        die()

BlobCacheFile.write_durable = write_durable
BlobCacheFile.mark_present = mark_present

async def main():
    limiter = trio.CapacityLimiter(1)
    cache = CachedBackend(LocalFsBackend(LocalFsConfig(dir=blob_dir), limiter),
                          CacheSettings(work_dir=work_dir, amplify_io=0), limiter)
    blob = await cache.open_blob(BLOB, len(SPECS), data_size(SPECS))
    for spec in SPECS[::2]:  # non-adjacent chunks: one write per chunk
        await blob.read_chunks([spec], ZlibSha256Codec())

trio.run(main)
"""


@pytest.mark.parametrize(("mode", "recorded"), [("mid-data", 1), ("after-data", 1),
                                                 ("after-bit", 2)])
async def test_kill_9_during_fill(tmp_path: Path, mode: str, recorded: int) -> None:
    blobs, work = tmp_path / "blobs", tmp_path / "cache"
    blobs.mkdir()
    (blobs / BLOB).write_bytes(STORED)
    with trio.fail_after(60):
        child = await trio.run_process([sys.executable, "-c", CHILD, mode, str(blobs),
                                        str(work)], cwd=ROOT, capture_stderr=True, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr

    limiter = trio.CapacityLimiter(2)
    backend = LocalFsBackend(LocalFsConfig(dir=str(blobs)), limiter)
    cache = CachedBackend(backend, CacheSettings(work_dir=str(work), amplify_io=0), limiter)
    blob = await cache.open_blob(BLOB, len(SPECS), data_size(SPECS))
    assert blob.file.count_present() == recorded
    assert await blob.read_chunks(SPECS, ZlibSha256Codec()) == CONTENTS
    # only the chunks the map did not vouch for went to the backend
    vouched = SPECS[::2][:recorded]
    assert backend.metrics.read_amount_total == len(STORED) - sum(
        s.compressed_size for s in vouched)
    await cache.aclose()
    reopened = CachedBackend(LocalFsBackend(LocalFsConfig(dir=str(blobs)), limiter),
                             CacheSettings(work_dir=str(work), validate=True), limiter)
    blob = await reopened.open_blob(BLOB, len(SPECS), data_size(SPECS))
    assert blob.file.all_ready
    assert await blob.read_chunks(SPECS, ZlibSha256Codec()) == CONTENTS
    assert reopened.metrics.digest_failures == 0
    await reopened.aclose()
    assert file_size(work / f"{BLOB}.blob.data") == data_size(SPECS)
