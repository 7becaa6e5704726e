"""WritablePassthroughFilesystem: unnamed files (open(O_TMPFILE), FUSE_TMPFILE) and linking
them into the tree. Runs as root, as the daemon does."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fuseclient
from tests.unit.fs.writable import ROOT, USER, create, lookup, make_tree
from vhostfs.errors import FsError
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fs.passthrough_write import WritablePassthroughFilesystem
from vhostfs.fs.pseudo import PseudoFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import ROOT_INO, FileHandle, Ino, ReadOnlyFilesystem
from vhostfs.fuse.server import FuseServer

Op = abi.Opcode
TMPFILE_RW = os.O_TMPFILE | os.O_RDWR  # what the guest kernel passes on (file->f_flags)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


@pytest.fixture(params=[True, False], ids=["handles", "names"])
def fs(tree: Path, request: pytest.FixtureRequest) -> Iterator[WritablePassthroughFilesystem]:
    # fd_cache=4: the LRU forgets the unnamed node's fd long before the link below
    wfs = WritablePassthroughFilesystem(tree, "auto", file_handles=request.param, fd_cache=4)
    assert wfs.use_handles is request.param
    yield wfs
    wfs.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def write(fs: WritablePassthroughFilesystem, ino: Ino, fh: FileHandle,
                data: bytes) -> None:  # fmt: skip
    assert await fs.write(ROOT, ino, fh, 0, [memoryview(data)], 0) == len(data)


async def evict(fs: WritablePassthroughFilesystem, tag: str) -> None:
    """Fill the O_PATH LRU with other nodes."""
    for i in range(fs.fd_cache_size + 1):
        await create(fs, ROOT_INO, f"{tag}{i}".encode())


async def test_tmpfile_write_then_link(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    parent = await lookup(fs, "open")
    entry, opened = await fs.tmpfile(USER, parent, stat.S_IFREG | 0o666, TMPFILE_RW, 0o027)
    assert stat.S_ISREG(entry.attr.mode) and entry.attr.nlink == 0
    assert stat.S_IMODE(entry.attr.mode) == 0o640
    assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
    assert os.listdir(tree / "open") == []  # unnamed
    await write(fs, entry.ino, opened.fh, b"unnamed data")
    await evict(fs, "a")

    linked = await fs.link(USER, entry.ino, parent, b"named")

    assert linked.ino == entry.ino and linked.attr.nlink == 1
    assert fs.nodes.lookups(entry.ino) == 2  # TMPFILE and LINK each count one
    st = os.stat(tree / "open" / "named")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
    assert (tree / "open" / "named").read_bytes() == b"unnamed data"
    await fs.release(ROOT, entry.ino, opened.fh, 0)
    await evict(fs, "b")
    # named now: reopened by file handle or by its new parent and name
    attr, _ = await fs.getattr(ROOT, entry.ino, None)
    assert attr.ino == st.st_ino and attr.size == 12
    assert await lookup(fs, "open/named") == entry.ino


async def test_tmpfile_excl_cannot_be_linked(fs: WritablePassthroughFilesystem,
                                             tree: Path) -> None:  # fmt: skip
    entry, opened = await fs.tmpfile(ROOT, ROOT_INO, stat.S_IFREG | 0o600,
                                     TMPFILE_RW | os.O_EXCL, 0)  # fmt: skip
    await write(fs, entry.ino, opened.fh, b"scratch")

    with pytest.raises(OSError) as caught:  # linkat(2): O_EXCL makes it never linkable
        await fs.link(ROOT, entry.ino, ROOT_INO, b"named")

    assert caught.value.errno == errno.ENOENT
    assert not (tree / "named").exists()
    buf = bytearray(16)
    assert await fs.read(ROOT, entry.ino, opened.fh, 0, [memoryview(buf)]) == 7
    assert bytes(buf[:7]) == b"scratch"


async def test_tmpfile_forget_releases_the_inode(fs: WritablePassthroughFilesystem) -> None:
    await lookup(fs, "dir")  # warm the caches so only the tmpfile's fds come and go
    before = open_fds()
    entry, opened = await fs.tmpfile(ROOT, ROOT_INO, stat.S_IFREG | 0o600, TMPFILE_RW, 0)
    await fs.getattr(ROOT, entry.ino, None)  # puts a reopened fd in the LRU as well
    assert open_fds() > before

    await fs.release(ROOT, entry.ino, opened.fh, 0)
    fs.forget(entry.ino, 1)

    assert open_fds() == before
    with pytest.raises(FsError) as caught:
        await fs.getattr(ROOT, entry.ino, None)
    assert caught.value.errno == errno.ESTALE


async def test_destroy_drops_unnamed_nodes(fs: WritablePassthroughFilesystem) -> None:
    await fs.init()
    before = open_fds()
    await fs.tmpfile(ROOT, ROOT_INO, stat.S_IFREG | 0o600, TMPFILE_RW, 0)
    await fs.destroy()
    assert open_fds() == before


async def test_tmpfile_needs_write_permission_on_the_parent(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    private = await lookup(fs, "private")  # 0700, root's
    with pytest.raises(OSError) as caught:
        await fs.tmpfile(USER, private, stat.S_IFREG | 0o600, TMPFILE_RW, 0)
    assert caught.value.errno == errno.EACCES
    file_ino = await lookup(fs, "file")
    with pytest.raises(FsError) as not_dir:
        await fs.tmpfile(ROOT, file_ino, stat.S_IFREG | 0o600, TMPFILE_RW, 0)
    assert not_dir.value.errno == errno.ENOTDIR


async def test_tmpfile_read_only_and_unsupported(tree: Path) -> None:
    before = sorted(os.listdir(tree))
    inner = PassthroughFilesystem(tree)
    try:
        for wrapped, code in ((ReadOnlyFilesystem(inner), errno.EROFS), (inner, errno.ENOSYS)):
            with pytest.raises(FsError) as caught:
                await wrapped.tmpfile(ROOT, ROOT_INO, stat.S_IFREG | 0o600, TMPFILE_RW, 0)
            assert caught.value.errno == code
    finally:
        inner.close()
    assert sorted(os.listdir(tree)) == before


async def test_tmpfile_routed_by_the_pseudo_root(tree: Path) -> None:
    wfs = WritablePassthroughFilesystem(tree)
    root = PseudoFilesystem()
    try:
        mount = await root.attach("/containers", wfs, "PassthroughFs")
        entry, opened = await root.tmpfile(ROOT, mount.root, stat.S_IFREG | 0o644,
                                           TMPFILE_RW, 0)  # fmt: skip
        assert entry.ino >> 56 == mount.index and entry.attr.ino >> 56 == mount.index
        await root.write(ROOT, entry.ino, opened.fh, 0, [memoryview(b"via pseudo")], 0)
        linked = await root.link(ROOT, entry.ino, mount.root, b"routed")
        assert linked.ino == entry.ino
        assert (tree / "routed").read_bytes() == b"via pseudo"
        with pytest.raises(FsError) as caught:  # the pseudo directories take no files
            await root.tmpfile(ROOT, ROOT_INO, stat.S_IFREG | 0o644, TMPFILE_RW, 0)
        assert caught.value.errno == errno.EROFS
    finally:
        wfs.close()


async def test_tmpfile_through_fuse(tree: Path) -> None:
    fs = WritablePassthroughFilesystem(tree)
    server = FuseServer(fs)
    await fuseclient.init(server)
    looked_up = await fuseclient.call(server, Op.LOOKUP, 1, b"open\0")
    parent = abi.EntryOut.unpack_from(looked_up.payload).nodeid
    args = abi.CreateIn(TMPFILE_RW, stat.S_IFREG | 0o644, 0o022, 0).pack() + b"/\0"
    header = fuseclient.in_header(Op.TMPFILE, parent, len(args), uid=1000, gid=1000)
    reply = await fuseclient.raw(server, [header, args], [16, 144])
    assert reply.error == 0 and reply.used == 16 + 128 + 16
    entry = abi.EntryOut.unpack_from(reply.payload)
    fh = abi.OpenOut.unpack_from(reply.payload, abi.EntryOut.SIZE).fh
    assert entry.attr.nlink == 0 and (entry.attr.uid, entry.attr.gid) == (1000, 1000)
    args = abi.WriteIn(fh, 0, 3, 0, 0, os.O_RDWR, 0).pack() + b"abc"
    assert (await fuseclient.call(server, Op.WRITE, entry.nodeid, args, out=8)).error == 0
    args = abi.LinkIn(entry.nodeid).pack() + b"linked\0"
    reply = await fuseclient.call(server, Op.LINK, parent, args)
    assert reply.error == 0 and abi.EntryOut.unpack_from(reply.payload).nodeid == entry.nodeid
    st = os.stat(tree / "open" / "linked")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o644)
    assert (tree / "open" / "linked").read_bytes() == b"abc"
    fs.close()
