"""The pseudo root: runtime attach/detach, node id namespaces, routing, isolation."""

from __future__ import annotations

import errno
import stat

import pytest

from tests.support.memoryfs import MemoryFilesystem
from vhostfs.errors import FsError
from vhostfs.fs.pseudo import PseudoFilesystem, split_ino
from vhostfs.fuse.filesystem import ROOT_INO, Context, FileHandle, FsOptions, Ino

CTX = Context(0, 0, 0)


def memfs(content: bytes) -> MemoryFilesystem:
    fs = MemoryFilesystem()
    fs.add(ROOT_INO, b"file", stat.S_IFREG | 0o644, data=content)
    return fs


async def walk(fs: PseudoFilesystem, path: str) -> Ino:
    ino = ROOT_INO
    for name in path.strip("/").split("/"):
        ino = (await fs.lookup(CTX, ino, name.encode())).ino
    return ino


async def read(fs: PseudoFilesystem, ino: Ino) -> bytes:
    buf = bytearray(100)
    opened = await fs.open(CTX, ino, 0)
    n = await fs.read(CTX, ino, opened.fh, 0, [memoryview(buf)])
    return bytes(buf[:n])


async def test_attach_creates_intermediate_dirs_and_routes() -> None:
    root = PseudoFilesystem()
    await root.attach("/containers", memfs(b"shared"), "PassthroughFs")
    await root.attach("/rafs/c1/lowerdir", memfs(b"image one"), "Rafs")
    names = [e.name for e in await root.readdir(CTX, ROOT_INO, FileHandle(0), 0)]
    assert names == [b".", b"..", b"containers", b"rafs"]
    one = await walk(root, "/rafs/c1/lowerdir/file")
    shared = await walk(root, "/containers/file")
    assert await read(root, one) == b"image one"
    assert await read(root, shared) == b"shared"
    assert split_ino(one)[0] != split_ino(shared)[0]  # different namespaces


async def test_inode_numbers_never_collide_across_mounts() -> None:
    root = PseudoFilesystem()
    await root.attach("/a", memfs(b"x"), "Rafs")
    await root.attach("/b", memfs(b"y"), "Rafs")
    a = await root.lookup(CTX, await walk(root, "/a"), b"file")
    b = await root.lookup(CTX, await walk(root, "/b"), b"file")
    assert a.ino != b.ino
    assert a.attr.ino != b.attr.ino


async def test_detach_leaves_the_others_alone_and_stales_old_nodes() -> None:
    root = PseudoFilesystem()
    await root.attach("/rafs/c1/lowerdir", memfs(b"one"), "Rafs")
    await root.attach("/rafs/c2/lowerdir", memfs(b"two"), "Rafs")
    one = await walk(root, "/rafs/c1/lowerdir/file")
    two = await walk(root, "/rafs/c2/lowerdir/file")
    await root.detach("/rafs/c1/lowerdir")
    assert await read(root, two) == b"two"
    with pytest.raises(FsError) as stale:
        await root.getattr(CTX, one, None)
    assert stale.value.errno == errno.ESTALE
    with pytest.raises(FsError) as gone:
        await walk(root, "/rafs/c1/lowerdir")
    assert gone.value.errno == errno.ENOENT
    # a new mount does not reuse the freed index while others are free
    await root.attach("/rafs/c3/lowerdir", memfs(b"three"), "Rafs")
    three = await walk(root, "/rafs/c3/lowerdir/file")
    assert split_ino(three)[0] != split_ino(one)[0]


async def test_attach_and_detach_errors() -> None:
    root = PseudoFilesystem()
    await root.attach("/containers", memfs(b""), "PassthroughFs")
    for path in ("/containers", "/containers/below"):
        with pytest.raises(FsError) as exists:
            await root.attach(path, memfs(b""), "Rafs")
        assert exists.value.errno == errno.EEXIST
    with pytest.raises(FsError) as missing:
        await root.detach("/nothing")
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(FsError) as relative:
        await root.attach("rafs/x", memfs(b""), "Rafs")
    assert relative.value.errno == errno.EINVAL


async def test_index_space_is_bounded_and_recycled() -> None:
    root = PseudoFilesystem()
    for i in range(255):
        await root.attach(f"/m{i}", memfs(b""), "Rafs")
    with pytest.raises(FsError) as full:
        await root.attach("/extra", memfs(b""), "Rafs")
    assert full.value.errno == errno.ENOSPC
    await root.detach("/m7")
    mount = await root.attach("/extra", memfs(b""), "Rafs")
    assert mount.index == 8


async def test_filesystem_at_root_keeps_its_node_ids() -> None:
    root = PseudoFilesystem()
    inner = memfs(b"at root")
    await root.attach("/", inner, "Rafs")
    entry = await root.lookup(CTX, ROOT_INO, b"file")
    assert entry.ino == (await inner.lookup(CTX, ROOT_INO, b"file")).ino
    assert await read(root, entry.ino) == b"at root"


async def test_a_filesystem_alone_at_root_is_served_directly_until_detached() -> None:
    root = PseudoFilesystem()
    inner = memfs(b"at root")
    await root.attach("/", inner, "Rafs")
    # No routing frame: the operations are the inner filesystem's own.
    assert root.lookup == inner.lookup and root.getattr == inner.getattr
    assert root.read == inner.read and root.may_suspend(ROOT_INO) == inner.may_suspend(ROOT_INO)
    entry = await root.lookup(CTX, ROOT_INO, b"file")
    assert await read(root, entry.ino) == b"at root"
    root.forget(entry.ino, 1)
    assert inner.lookups == {}

    await root.detach("/")
    # Routing again: the pseudo tree is empty, the old node is gone.
    assert root.lookup != inner.lookup
    with pytest.raises(FsError) as gone:
        await root.lookup(CTX, ROOT_INO, b"file")
    assert gone.value.errno == errno.ENOENT
    await root.attach("/elsewhere", memfs(b"mounted"), "Rafs")
    assert await read(root, await walk(root, "/elsewhere/file")) == b"mounted"


async def test_pseudo_tree_refuses_writes() -> None:
    root = PseudoFilesystem()
    with pytest.raises(FsError) as refused:
        await root.mkdir(CTX, ROOT_INO, b"new", 0o755, 0)
    assert refused.value.errno == errno.EROFS


async def test_filesystem_at_root_decides_the_session_options() -> None:
    root = PseudoFilesystem(FsOptions(readdirplus=True))
    assert (await root.init()).readdirplus
    inner = MemoryFilesystem(FsOptions(readdirplus=False))
    await root.attach("/", inner, "PassthroughFs")
    assert not (await root.init()).readdirplus


async def test_may_suspend_follows_the_filesystem_that_owns_the_node() -> None:
    """What a queue thread may serve inline: nodes of inline filesystems, and the pseudo
    directories only while no attached filesystem may await (a lookup of a mount point asks
    that filesystem for its root)."""
    root = PseudoFilesystem()
    inline = MemoryFilesystem()
    inline.add(ROOT_INO, b"file", stat.S_IFREG | 0o644, data=b"x")
    await root.attach("/shared", inline, "PassthroughFs")
    shared_file = await walk(root, "/shared/file")
    assert not root.may_suspend(ROOT_INO) and not root.may_suspend(shared_file)

    awaiting = MemoryFilesystem(awaiting=True)
    awaiting.add(ROOT_INO, b"file", stat.S_IFREG | 0o644, data=b"y")
    await root.attach("/rafs/c1", awaiting, "Rafs")
    image_file = await walk(root, "/rafs/c1/file")
    assert root.may_suspend(image_file)
    assert root.may_suspend(ROOT_INO)  # its lookups may reach the image's root
    assert not root.may_suspend(shared_file)

    await root.detach("/rafs/c1")
    assert not root.may_suspend(ROOT_INO)
