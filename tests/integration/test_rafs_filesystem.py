"""The upstream-built fixture images served through RafsFilesystem and the FUSE data path.

Blobs come from the fixture directories through the localfs backend, with and without the
blob cache; every byte read is checked against the digests the fixtures' README lists.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import pytest
import trio

from backends.cache import CachedBackend, CacheSettings
from backends.config import LocalFsConfig
from backends.localfs import LocalFsBackend
from rafs import open_image
from tests.support import fuseclient
from tests.support.fixtures import V5_DIR, V6_DIR, V6_FILES
from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseDriver, FuseError, parse_dirents
from vhostfs import daemon
from vhostfs.fs.chunks import CachedChunks, ChunkSource, DirectChunks
from vhostfs.fs.rafsfs import RafsFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import ROOT_INO, Context
from vhostfs.fuse.server import FuseServer

CTX = Context(0, 0, 0)


def local(blob_dir: Path, limiter: trio.CapacityLimiter) -> LocalFsBackend:
    return LocalFsBackend(LocalFsConfig(dir=str(blob_dir)), limiter)


async def read_all(fs: RafsFilesystem, ino: int, size: int) -> bytes:
    out = bytearray(size)
    views = [memoryview(out)[i : i + 4096] for i in range(0, size, 4096)]
    n = await fs.read(CTX, ino, 0, 0, views)  # type: ignore[arg-type]
    return bytes(out[:n])


@pytest.mark.parametrize("cached", [False, True], ids=["direct", "blob-cache"])
async def test_v6_fixture_contents(tmp_path: Path, cached: bool) -> None:
    limiter = trio.CapacityLimiter(4)
    backend = local(V6_DIR / "blobs", limiter)
    source: ChunkSource
    if cached:
        source = CachedChunks(CachedBackend(backend, CacheSettings(str(tmp_path)), limiter))
    else:
        source = DirectChunks(backend, limiter)
    fs = RafsFilesystem(open_image(V6_DIR / "bootstrap"), source)
    names = [e.name for e in await fs.readdir(CTX, ROOT_INO, 0, 0)]  # type: ignore[arg-type]
    assert sorted(names) == [b".", b"..", *sorted(V6_FILES)]
    for name, (size, sha256) in V6_FILES.items():
        entry = await fs.lookup(CTX, ROOT_INO, name)
        assert entry.attr.size == size
        assert hashlib.sha256(await read_all(fs, entry.ino, size)).hexdigest() == sha256
    if cached:
        cache_files = [p.name for p in tmp_path.iterdir()]  # noqa: ASYNC240 - a test's tmp dir
        assert any(name.endswith(".blob.data") for name in cache_files)
    await source.aclose()


async def test_negative_lookup_is_cacheable() -> None:
    limiter = trio.CapacityLimiter(1)
    fs = RafsFilesystem(
        open_image(V6_DIR / "bootstrap"), DirectChunks(local(V6_DIR, limiter), limiter)
    )
    entry = await fs.lookup(CTX, ROOT_INO, b"missing")
    assert entry.ino == 0
    assert entry.entry_timeout > 1e9


async def test_v5_fixture_holes_hardlinks_and_symlinks() -> None:
    limiter = trio.CapacityLimiter(1)
    fs = RafsFilesystem(
        open_image(V5_DIR / "bootstrap"), DirectChunks(local(V5_DIR / "blobs", limiter), limiter)
    )
    hl = await fs.lookup(CTX, ROOT_INO, b"hardlink-test")
    foo = await fs.lookup(CTX, hl.ino, b"foo")
    other = await fs.lookup(CTX, hl.ino, b"test.sh")
    assert foo.ino == other.ino
    assert foo.attr.nlink == 3
    names = {e.name: e for e in await fs.readdir(CTX, ROOT_INO, 0, 0)}  # type: ignore[arg-type]
    links = [e for e in names.values() if e.type == stat.S_IFLNK >> 12]
    for link in links:
        target = await fs.readlink(CTX, link.ino)  # type: ignore[arg-type]
        assert target


async def test_corrupted_blob_gives_eio_not_data(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    shutil.copytree(V6_DIR / "blobs", blobs)
    blob = next(blobs.iterdir())
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # inside the first zstd chunk
    blob.write_bytes(bytes(data))
    limiter = trio.CapacityLimiter(1)
    fs = RafsFilesystem(
        open_image(V6_DIR / "bootstrap"), DirectChunks(local(blobs, limiter), limiter)
    )
    first = min(V6_FILES)
    entry = await fs.lookup(CTX, ROOT_INO, first)
    with pytest.raises(Exception) as info:  # any error carrying EIO is right
        await read_all(fs, entry.ino, entry.attr.size)
    assert getattr(info.value, "errno", None) == 5


async def test_fixture_through_the_data_path(tmp_path: Path, nursery: trio.Nursery) -> None:
    limiter = trio.CapacityLimiter(4)
    source = CachedChunks(
        CachedBackend(local(V6_DIR / "blobs", limiter), CacheSettings(str(tmp_path)), limiter)
    )
    fs = RafsFilesystem(open_image(V6_DIR / "bootstrap"), source)
    path = str(tmp_path / "vhost.sock")
    listener = await daemon.listen_unix(path)
    nursery.start_soon(lambda: daemon.serve(listener, FuseServer(fs)))

    def guest() -> dict[bytes, str]:
        with Frontend.connect(path, FrontendOptions(packed=True)) as frontend:
            fuse = FuseDriver(frontend)
            fuse.init()
            digests = {}
            for name in V6_FILES:
                entry = fuse.lookup(ROOT_INO, name)
                fh = fuse.open(entry.nodeid).fh
                data = fuse.read(entry.nodeid, fh, 0, 1 << 20)
                digests[name] = hashlib.sha256(data).hexdigest()
            with pytest.raises(FuseError) as refused:
                fuse.open(entry.nodeid, flags=1)
            assert refused.value.errno == 30  # EROFS
            return digests

    digests = await trio.to_thread.run_sync(guest)
    assert digests == {name: sha for name, (_, sha) in V6_FILES.items()}


class _LookedUpByName(RafsFilesystem):
    """The same image without its own READDIRPLUS: the server looks every entry up."""

    async def readdirplus(self, *args: object, **kwargs: object) -> bool:
        return False


async def _listing(server: FuseServer, nodeid: int, size: int) -> list[bytes]:
    """Every READDIRPLUS reply payload of one directory, read `size` bytes at a time."""
    replies: list[bytes] = []
    offset = 0
    while True:
        args = abi.ReadIn(0, offset, size, 0, 0, 0, 0).pack()
        reply = await fuseclient.call(server, abi.Opcode.READDIRPLUS, nodeid, args)
        assert reply.error == 0
        if not reply.payload:
            return replies
        replies.append(reply.payload)
        offset = parse_dirents(reply.payload, plus=True)[-1].off


@pytest.mark.parametrize(("image_dir", "entries"), [(V5_DIR, 101), (V6_DIR, 4)], ids=["v5", "v6"])
async def test_readdirplus_lists_what_lookups_would_tell(image_dir: Path, entries: int) -> None:
    """RafsFilesystem.readdirplus takes each entry from the listing instead of a lookup by
    name: every reply, over every directory and at two buffer sizes, is the same bytes."""
    limiter = trio.CapacityLimiter(1)
    servers = []
    for cls in (RafsFilesystem, _LookedUpByName):
        chunks = DirectChunks(local(image_dir, limiter), limiter)
        fs = cls(open_image(image_dir / "bootstrap"), chunks)
        servers.append(FuseServer(fs))
        await fuseclient.init(servers[-1])
    fast, by_name = servers
    directories = [int(ROOT_INO)]
    listed = 0
    while directories:
        nodeid = directories.pop()
        for size in (4096, 400):
            ours = await _listing(fast, nodeid, size)
            assert ours == await _listing(by_name, nodeid, size)
        for d in parse_dirents(b"".join(ours), plus=True):
            listed += 1
            if d.type == stat.S_IFDIR >> 12 and d.name not in (b".", b".."):
                directories.append(d.entry.nodeid)
    assert listed == entries  # every directory of the image was walked, dots included
