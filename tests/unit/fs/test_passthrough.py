"""PassthroughFilesystem over a temporary host tree."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostfs.errors import FsError
from vhostfs.fs.passthrough import CachePolicy, PassthroughFilesystem
from vhostfs.fuse.filesystem import ROOT_INO, Context, Ino, ReadOnlyFilesystem

CTX = Context(0, 0, 0)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_bytes(b"hello world")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_bytes(b"inner")
    os.link(root / "file", root / "hard")
    os.symlink("file", root / "link")
    os.symlink("/etc", root / "escape_abs")
    os.symlink("../..", root / "escape_rel")
    (tmp_path / "secret").write_bytes(b"outside")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture(params=[True, False], ids=["handles", "names"])
def fs(tree: Path, request: pytest.FixtureRequest) -> Iterator[PassthroughFilesystem]:
    pfs = PassthroughFilesystem(tree, "auto", file_handles=request.param, fd_cache=8)
    assert pfs.use_handles is request.param  # this host (root, ext4) supports handles
    yield pfs
    pfs.close()


async def lookup(fs: PassthroughFilesystem, path: str) -> Ino:
    ino = ROOT_INO
    for part in path.split("/"):
        ino = (await fs.lookup(CTX, ino, part.encode())).ino
    return ino


async def read_all(fs: PassthroughFilesystem, ino: Ino, size: int = 4096) -> bytes:
    opened = await fs.open(CTX, ino, os.O_RDONLY)
    buf = bytearray(size)
    n = await fs.read(CTX, ino, opened.fh, 0, [memoryview(buf)[:3], memoryview(buf)[3:]])
    await fs.release(CTX, ino, opened.fh, 0)
    return bytes(buf[:n])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_lookup_getattr_read(fs: PassthroughFilesystem, tree: Path) -> None:
    await fs.init()
    entry = await fs.lookup(CTX, ROOT_INO, b"file")
    host = os.stat(tree / "file")
    assert entry.attr.ino == host.st_ino and entry.attr.size == 11
    assert entry.entry_timeout == entry.attr_timeout == 1.0
    attr, timeout = await fs.getattr(CTX, entry.ino, None)
    assert attr.ino == host.st_ino and stat.S_ISREG(attr.mode) and timeout == 1.0
    assert await read_all(fs, entry.ino) == b"hello world"
    inner = await lookup(fs, "dir/inner")
    assert await read_all(fs, inner) == b"inner"


async def test_missing_name(fs: PassthroughFilesystem) -> None:
    with pytest.raises(OSError) as info:
        await fs.lookup(CTX, ROOT_INO, b"nope")
    assert info.value.errno == errno.ENOENT


async def test_hardlinks_share_a_node(fs: PassthroughFilesystem) -> None:
    a = await fs.lookup(CTX, ROOT_INO, b"file")
    b = await fs.lookup(CTX, ROOT_INO, b"hard")
    assert a.ino == b.ino and a.attr.nlink == 2
    assert fs.nodes.lookups(a.ino) == 2


async def test_forget_drops_nodes_and_fds(fs: PassthroughFilesystem) -> None:
    entry = await fs.lookup(CTX, ROOT_INO, b"file")
    await fs.lookup(CTX, ROOT_INO, b"file")
    fs.forget(entry.ino, 1)
    assert len(fs.nodes) == 2
    fs.forget(entry.ino, 1)
    assert len(fs.nodes) == 1 and entry.ino not in fs.fd_cache
    with pytest.raises(FsError) as info:
        await fs.getattr(CTX, entry.ino, None)
    assert info.value.errno == errno.ESTALE


async def test_symlinks_are_never_followed(fs: PassthroughFilesystem, tree: Path) -> None:
    link = await fs.lookup(CTX, ROOT_INO, b"link")
    assert stat.S_ISLNK(link.attr.mode)
    assert await fs.readlink(CTX, link.ino) == b"file"
    for name in (b"escape_abs", b"escape_rel"):
        esc = await fs.lookup(CTX, ROOT_INO, name)
        assert stat.S_ISLNK(esc.attr.mode)
        with pytest.raises(OSError) as info:
            await fs.lookup(CTX, esc.ino, b"secret")  # through the symlink: refused
        assert info.value.errno in (errno.ENOTDIR, errno.ELOOP)
        with pytest.raises(FsError) as denied:
            await fs.opendir(CTX, esc.ino, 0)
        assert denied.value.errno == errno.ENOTDIR
    with pytest.raises(FsError) as opened:
        await fs.open(CTX, link.ino, os.O_RDONLY)
    assert opened.value.errno == errno.ELOOP


@pytest.mark.parametrize("name", [b"..", b".", b"../secret", b"dir/inner", b"", b"/etc"])
async def test_names_that_could_escape(fs: PassthroughFilesystem, name: bytes) -> None:
    with pytest.raises(FsError) as info:
        await fs.lookup(CTX, ROOT_INO, name)
    assert info.value.errno == errno.EINVAL


async def test_root_dotdot_is_root(fs: PassthroughFilesystem, tree: Path) -> None:
    opened = await fs.opendir(CTX, ROOT_INO, 0)
    entries = list(await fs.readdir(CTX, ROOT_INO, opened.fh, 0))
    root_ino = os.stat(tree).st_ino
    assert [(e.name, e.ino) for e in entries[:2]] == [(b".", root_ino), (b"..", root_ino)]
    names = sorted(e.name for e in entries[2:])
    assert names == sorted([b"file", b"dir", b"hard", b"link", b"escape_abs", b"escape_rel",
                            b"fifo"])  # fmt: skip
    kinds = {e.name: e.type for e in entries}
    assert kinds[b"dir"] == stat.S_IFDIR >> 12 and kinds[b"link"] == stat.S_IFLNK >> 12
    assert kinds[b"fifo"] == stat.S_IFIFO >> 12
    await fs.releasedir(CTX, ROOT_INO, opened.fh)


async def test_host_replacement_is_estale(tree: Path) -> None:
    fs = PassthroughFilesystem(tree, file_handles=False, fd_cache=4)
    entry = await fs.lookup(CTX, ROOT_INO, b"file")
    fs.fd_cache.clear()  # as if evicted (the fd leaks only in this test)
    os.rename(tree / "file", tree / "old")
    (tree / "file").write_bytes(b"impostor")
    with pytest.raises(FsError) as info:
        await fs.getattr(CTX, entry.ino, None)
    assert info.value.errno == errno.ESTALE
    fs.close()


async def test_handles_survive_host_rename(tree: Path) -> None:
    fs = PassthroughFilesystem(tree, fd_cache=4)
    entry = await fs.lookup(CTX, ROOT_INO, b"file")
    fs._uncache_fd(entry.ino)
    os.rename(tree / "file", tree / "dir" / "moved")
    attr, _ = await fs.getattr(CTX, entry.ino, None)
    assert attr.ino == entry.attr.ino
    fs.close()


async def test_xattrs(fs: PassthroughFilesystem, tree: Path) -> None:
    os.setxattr(tree / "file", "user.color", b"blue")
    os.setxattr(tree / "link", "trusted.t", b"1", follow_symlinks=False)
    file = await fs.lookup(CTX, ROOT_INO, b"file")
    assert await fs.getxattr(CTX, file.ino, b"user.color") == b"blue"
    assert b"user.color" in await fs.listxattr(CTX, file.ino)
    link = await fs.lookup(CTX, ROOT_INO, b"link")
    assert await fs.getxattr(CTX, link.ino, b"trusted.t") == b"1"  # the link's own
    with pytest.raises(OSError) as info:
        await fs.getxattr(CTX, file.ino, b"user.none")
    assert info.value.errno == errno.ENODATA


async def test_special_files(fs: PassthroughFilesystem) -> None:
    fifo = await fs.lookup(CTX, ROOT_INO, b"fifo")
    assert stat.S_ISFIFO(fifo.attr.mode)
    with pytest.raises(FsError) as info:
        await fs.open(CTX, fifo.ino, os.O_RDONLY)  # would block the loop on the host
    assert info.value.errno == errno.EACCES


async def test_sparse_file_seek(fs: PassthroughFilesystem, tree: Path) -> None:
    fd = os.open(tree / "sparse", os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwrite(fd, b"data", 1 << 30)
    os.close(fd)
    entry = await fs.lookup(CTX, ROOT_INO, b"sparse")
    assert entry.attr.size == (1 << 30) + 4 and entry.attr.blocks < 64
    opened = await fs.open(CTX, entry.ino, os.O_RDONLY)
    assert await fs.lseek(CTX, entry.ino, opened.fh, 0, os.SEEK_HOLE) == 0
    data = await fs.lseek(CTX, entry.ino, opened.fh, 0, os.SEEK_DATA)
    assert (1 << 30) - 4096 <= data <= 1 << 30
    buf = bytearray(8)
    assert await fs.read(CTX, entry.ino, opened.fh, (1 << 30) - 4, [memoryview(buf)]) == 8
    assert bytes(buf) == b"\0\0\0\0data"
    with pytest.raises(OSError) as info:
        await fs.lseek(CTX, entry.ino, opened.fh, (1 << 30) + 10, os.SEEK_DATA)
    assert info.value.errno == errno.ENXIO


async def test_cache_policies(tree: Path) -> None:
    none = PassthroughFilesystem(tree, CachePolicy.NONE)
    assert (await none.init()).readdirplus is False
    entry = await none.lookup(CTX, ROOT_INO, b"file")
    assert entry.entry_timeout == 0 and (await none.open(CTX, entry.ino, 0)).direct_io
    always = PassthroughFilesystem(tree, "always")
    entry = await always.lookup(CTX, ROOT_INO, b"file")
    assert entry.attr_timeout == 86400 and (await always.open(CTX, entry.ino, 0)).keep_cache
    with pytest.raises(ValueError, match="bogus"):
        PassthroughFilesystem(tree, "bogus")
    none.close()
    always.close()


async def test_statfs(fs: PassthroughFilesystem, tree: Path) -> None:
    st = await fs.statfs(CTX, ROOT_INO)
    assert st.blocks == os.statvfs(tree).f_blocks and st.namelen == 255


async def test_read_only_wrapper(fs: PassthroughFilesystem) -> None:
    ro = ReadOnlyFilesystem(fs)
    entry = await ro.lookup(CTX, ROOT_INO, b"file")
    with pytest.raises(FsError) as info:
        await ro.open(CTX, entry.ino, os.O_WRONLY)
    assert info.value.errno == errno.EROFS


async def test_destroy_closes_everything(tree: Path) -> None:
    before = open_fds()
    fs = PassthroughFilesystem(tree, fd_cache=8)
    await fs.init()
    entry = await fs.lookup(CTX, ROOT_INO, b"file")
    await fs.open(CTX, entry.ino, 0)
    await fs.opendir(CTX, ROOT_INO, 0)
    await fs.destroy()
    assert len(fs.nodes) == 1 and len(fs.handles) == 0 and not fs.fd_cache
    fs.close()
    assert open_fds() == before
