"""WritablePassthroughFilesystem, the contents: attributes, writes and privilege killing,
fallocate, the writeback-cache flags, xattrs (trusted.overlay.*), and a FUSE round trip."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fuseclient
from tests.unit.fs.writable import FAILED, ROOT, USER, WHITEOUT, create, lookup, make_tree
from vhostfs.errors import FsError
from vhostfs.fs import hostfd
from vhostfs.fs.passthrough_write import WritablePassthroughFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.abi import WRITE_KILL_SUIDGID
from vhostfs.fuse.filesystem import ROOT_INO, Context, SetAttr
from vhostfs.fuse.server import FuseServer

Op = abi.Opcode
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


@pytest.fixture(params=[True, False], ids=["handles", "names"])
def fs(tree: Path, request: pytest.FixtureRequest) -> Iterator[WritablePassthroughFilesystem]:
    wfs = WritablePassthroughFilesystem(tree, "auto", file_handles=request.param, fd_cache=8)
    assert wfs.use_handles is request.param
    yield wfs
    wfs.close()

# --- attributes -------------------------------------------------------------------------


async def test_setattr_mode_owner_size_times(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    ino = await lookup(fs, "file")
    attr, timeout = await fs.setattr(ROOT, ino, None, SetAttr(mode=stat.S_IFREG | 0o600))
    assert stat.S_IMODE(attr.mode) == 0o600 and timeout == fs.timeout
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(uid=1234, gid=5678))
    assert (attr.uid, attr.gid) == (1234, 5678)
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(gid=42))
    assert (attr.uid, attr.gid) == (1234, 42)
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(size=5))
    assert attr.size == 5 and (tree / "file").read_bytes() == b"hello"
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(atime_ns=10**9 + 5, mtime_ns=2 * 10**9))
    assert (attr.atime, attr.atime_ns, attr.mtime, attr.mtime_ns) == (1, 5, 2, 0)
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(mtime_now=True))
    assert attr.atime == 1 and attr.mtime > 1_000_000_000  # atime left alone (UTIME_OMIT)
    st = os.stat(tree / "file")
    assert st.st_size == 5 and st.st_uid == 1234 and st.st_atime_ns == 10**9 + 5


async def test_setattr_through_a_handle(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    ino = await lookup(fs, "file")
    opened = await fs.open(ROOT, ino, os.O_WRONLY)
    os.rename(tree / "file", tree / "dir" / "elsewhere")  # the handle does not care
    attr, _ = await fs.setattr(ROOT, ino, opened.fh, SetAttr(size=2, mode=0o640))
    assert attr.size == 2 and stat.S_IMODE(attr.mode) == 0o640
    assert (tree / "dir" / "elsewhere").read_bytes() == b"he"
    await fs.release(ROOT, ino, opened.fh, 0)


async def test_setattr_on_a_symlink_stays_on_the_link(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    os.symlink(tree.parent / "secret", tree / "to_secret")
    link = await lookup(fs, "to_secret")
    before = os.stat(tree.parent / "secret")
    attr, _ = await fs.setattr(ROOT, link, None, SetAttr(uid=77, gid=77, mtime_ns=10**9))
    assert stat.S_ISLNK(attr.mode) and attr.uid == 77 and attr.mtime == 1
    with pytest.raises(FsError) as info:
        await fs.setattr(ROOT, link, None, SetAttr(size=0))
    assert info.value.errno == errno.EINVAL
    after = os.stat(tree.parent / "secret")
    assert (after.st_uid, after.st_size, after.st_mtime_ns) == (
        before.st_uid, before.st_size, before.st_mtime_ns)  # fmt: skip
    with pytest.raises(FsError) as info:
        await fs.setattr(ROOT, await lookup(fs, "dir"), None, SetAttr(size=0))
    assert info.value.errno == errno.EISDIR


async def test_truncate_kills_suid_only_when_asked(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    ino = await lookup(fs, "file")
    os.chmod(tree / "file", 0o6755)
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(size=3))
    assert stat.S_IMODE(attr.mode) == 0o6755  # a CAP_FSETID caller keeps them
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(size=1, kill_suidgid=True))
    assert stat.S_IMODE(attr.mode) == 0o0755
    os.chmod(tree / "file", 0o6744)  # no group-exec: sgid means mandatory locking, kept
    attr, _ = await fs.setattr(ROOT, ino, None, SetAttr(size=0, kill_suidgid=True))
    assert stat.S_IMODE(attr.mode) == 0o2744


async def test_write_kills_suid_with_the_flag(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    ino = await lookup(fs, "file")
    os.chmod(tree / "file", 0o4755)
    opened = await fs.open(ROOT, ino, os.O_WRONLY)
    await fs.write(ROOT, ino, opened.fh, 0, [memoryview(b"H")], 0)
    assert stat.S_IMODE(os.stat(tree / "file").st_mode) == 0o4755
    await fs.write(ROOT, ino, opened.fh, 1, [memoryview(b"E")], WRITE_KILL_SUIDGID)
    assert stat.S_IMODE(os.stat(tree / "file").st_mode) == 0o0755
    assert (tree / "file").read_bytes() == b"HEllo world"
    await fs.release(ROOT, ino, opened.fh, 0)


async def test_open_trunc_by_non_root_kills_suid(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    ino = await lookup(fs, "file")
    os.chmod(tree / "file", 0o4777)
    opened = await fs.open(ROOT, ino, os.O_WRONLY | os.O_TRUNC)
    await fs.release(ROOT, ino, opened.fh, 0)
    assert stat.S_IMODE(os.stat(tree / "file").st_mode) == 0o4777
    opened = await fs.open(USER, ino, os.O_WRONLY | os.O_TRUNC)
    await fs.release(USER, ino, opened.fh, 0)
    assert stat.S_IMODE(os.stat(tree / "file").st_mode) == 0o0777


# --- data -------------------------------------------------------------------------------


async def test_fallocate_and_seek(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    ino = await create(fs, ROOT_INO, b"sparse")
    opened = await fs.open(ROOT, ino, os.O_RDWR)
    await fs.fallocate(ROOT, ino, opened.fh, 0, 1 << 20, 0)
    assert os.stat(tree / "sparse").st_size == 1 << 20
    await fs.write(ROOT, ino, opened.fh, 0, [memoryview(b"x" * (1 << 20))], 0)
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    await fs.fallocate(ROOT, ino, opened.fh, 256 << 10, 256 << 10, mode)
    assert await fs.lseek(ROOT, ino, opened.fh, 0, os.SEEK_HOLE) == 256 << 10
    assert await fs.lseek(ROOT, ino, opened.fh, 256 << 10, os.SEEK_DATA) == 512 << 10
    assert os.stat(tree / "sparse").st_size == 1 << 20
    with pytest.raises(FAILED) as info:
        await fs.fallocate(ROOT, ino, opened.fh, 0, 4096, 0x7F)
    assert info.value.errno in (errno.EOPNOTSUPP, errno.EINVAL)
    await fs.release(ROOT, ino, opened.fh, 0)


async def test_write_to_a_read_only_handle(fs: WritablePassthroughFilesystem) -> None:
    ino = await lookup(fs, "file")
    opened = await fs.open(ROOT, ino, os.O_RDONLY)
    with pytest.raises(FAILED) as info:
        await fs.write(ROOT, ino, opened.fh, 0, [memoryview(b"x")], 0)
    assert info.value.errno == errno.EBADF
    await fs.release(ROOT, ino, opened.fh, 0)


async def test_many_small_views_are_written_in_order(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    ino = await create(fs, ROOT_INO, b"views")
    opened = await fs.open(ROOT, ino, os.O_WRONLY)
    views = [memoryview(bytes([i % 251])) for i in range(3000)]  # > IOV_MAX
    assert await fs.write(ROOT, ino, opened.fh, 10, views, 0) == 3000
    await fs.release(ROOT, ino, opened.fh, 0)
    assert (tree / "views").read_bytes() == bytes(10) + bytes(i % 251 for i in range(3000))


async def test_sync_calls(fs: WritablePassthroughFilesystem) -> None:
    dir_ino = await lookup(fs, "dir")
    opened = await fs.opendir(ROOT, dir_ino, 0)
    await fs.fsyncdir(ROOT, dir_ino, opened.fh, datasync=False)
    await fs.releasedir(ROOT, dir_ino, opened.fh)
    await fs.syncfs(ROOT, ROOT_INO)
    st = await fs.statfs(ROOT, ROOT_INO)
    assert st.bsize > 0 and st.namelen == 255


async def test_writeback_cache_open_flags(tree: Path) -> None:
    fs = WritablePassthroughFilesystem(tree, writeback=True, timeout=5.0)
    opts = await fs.init()
    assert opts.writeback_cache and opts.killpriv_v2
    entry = await fs.lookup(ROOT, ROOT_INO, b"file")
    assert entry.entry_timeout == entry.attr_timeout == 5.0
    opened = await fs.open(ROOT, entry.ino, os.O_WRONLY | os.O_APPEND)
    buf = bytearray(5)  # the guest page cache may read a write-only file
    assert await fs.read(ROOT, entry.ino, opened.fh, 0, [memoryview(buf)]) == 5
    await fs.write(ROOT, entry.ino, opened.fh, 0, [memoryview(b"J")], 0)  # not appended
    await fs.release(ROOT, entry.ino, opened.fh, 0)
    assert (tree / "file").read_bytes() == b"Jello world"
    fs.close()
    plain = WritablePassthroughFilesystem(tree)
    assert not (await plain.init()).writeback_cache
    plain.close()


# --- xattrs -----------------------------------------------------------------------------


async def test_overlay_xattrs(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    dir_ino = await lookup(fs, "dir")
    await fs.setxattr(ROOT, dir_ino, b"trusted.overlay.opaque", b"y", 0)
    assert os.getxattr(tree / "dir", "trusted.overlay.opaque") == b"y"
    assert await fs.getxattr(ROOT, dir_ino, b"trusted.overlay.opaque") == b"y"
    assert b"trusted.overlay.opaque" in await fs.listxattr(ROOT, dir_ino)
    with pytest.raises(FAILED) as info:
        await fs.setxattr(ROOT, dir_ino, b"trusted.overlay.opaque", b"x", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FAILED) as info:
        await fs.setxattr(ROOT, dir_ino, b"trusted.overlay.none", b"x", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    await fs.setxattr(ROOT, dir_ino, b"trusted.overlay.opaque", b"x", os.XATTR_REPLACE)
    assert os.getxattr(tree / "dir", "trusted.overlay.opaque") == b"x"
    await fs.removexattr(ROOT, dir_ino, b"trusted.overlay.opaque")
    assert b"trusted.overlay.opaque" not in await fs.listxattr(ROOT, dir_ino)
    with pytest.raises(FAILED) as info:
        await fs.removexattr(ROOT, dir_ino, b"trusted.overlay.opaque")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(FsError) as bad:
        await fs.setxattr(ROOT, dir_ino, b"user.x", b"x", 1 << 4)
    assert bad.value.errno == errno.EINVAL


async def test_listxattr_hides_trusted_from_unprivileged_callers(
    fs: WritablePassthroughFilesystem,
) -> None:
    ino = await lookup(fs, "file")
    await fs.setxattr(ROOT, ino, b"trusted.overlay.origin", b"x", 0)
    await fs.setxattr(ROOT, ino, b"user.note", b"y", 0)

    as_root = await fs.listxattr(ROOT, ino)
    as_user = await fs.listxattr(USER, ino)
    as_root_in_a_group = await fs.listxattr(Context(0, 1000, 1), ino)

    assert {b"trusted.overlay.origin", b"user.note"} <= set(as_root)
    assert set(as_root_in_a_group) == set(as_root)  # privilege follows the uid
    assert b"user.note" in as_user
    assert not [n for n in as_user if n.startswith(b"trusted.")]
    assert set(as_root) - set(as_user) == {b"trusted.overlay.origin"}


async def test_xattrs_on_whiteouts_and_symlinks(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    wh = await fs.mknod(ROOT, ROOT_INO, b"wh", WHITEOUT, 0, 0)
    await fs.setxattr(ROOT, wh.ino, b"trusted.overlay.whiteout", b"", 0)
    assert os.getxattr(tree / "wh", "trusted.overlay.whiteout", follow_symlinks=False) == b""
    os.symlink(tree.parent / "secret", tree / "to_secret")
    link = await lookup(fs, "to_secret")
    await fs.setxattr(ROOT, link, b"trusted.overlay.origin", b"\x00\xfb", 0)
    assert os.getxattr(tree / "to_secret", "trusted.overlay.origin",
                       follow_symlinks=False) == b"\x00\xfb"  # fmt: skip
    assert os.listxattr(tree.parent / "secret") == []  # the target is untouched


# --- through the FUSE server ------------------------------------------------------------


async def test_overlay_upper_ops_through_fuse(tree: Path) -> None:
    fs = WritablePassthroughFilesystem(tree)
    server = FuseServer(fs)
    init = await fuseclient.init(server)
    assert init.flags & abi.InitFlags.HANDLE_KILLPRIV_V2
    assert not init.flags & abi.InitFlags.WRITEBACK_CACHE
    args = abi.MknodIn(WHITEOUT, 0, 0o022, 0).pack() + b"wh\0"
    reply = await fuseclient.call(server, Op.MKNOD, 1, args)
    assert reply.error == 0 and stat.S_ISCHR(abi.EntryOut.unpack_from(reply.payload).attr.mode)
    value = b"y"
    args = abi.SetxattrInCompat(len(value), 0).pack() + b"trusted.overlay.opaque\0" + value
    assert (await fuseclient.call(server, Op.SETXATTR, 1, args)).error == 0
    assert os.getxattr(tree, "trusted.overlay.opaque") == b"y"
    args = abi.Rename2In(1, hostfd.RENAME_NOREPLACE, 0).pack() + b"file\0wh\0"
    assert (await fuseclient.call(server, Op.RENAME2, 1, args)).error == -errno.EEXIST
    args = abi.Rename2In(1, hostfd.RENAME_EXCHANGE, 0).pack() + b"file\0wh\0"
    assert (await fuseclient.call(server, Op.RENAME2, 1, args)).error == 0
    assert stat.S_ISCHR(os.lstat(tree / "file").st_mode)
    args = abi.CreateIn(os.O_CREAT | os.O_WRONLY, stat.S_IFREG | 0o4755, 0, 0).pack() + b"x\0"
    reply = await fuseclient.call(server, Op.CREATE, 1, args)
    assert reply.error == 0
    entry = abi.EntryOut.unpack_from(reply.payload)
    fh = abi.OpenOut.unpack_from(reply.payload, abi.EntryOut.SIZE).fh
    args = abi.WriteIn(fh, 0, 3, abi.WRITE_KILL_SUIDGID, 0, os.O_WRONLY, 0).pack() + b"abc"
    reply = await fuseclient.call(server, Op.WRITE, entry.nodeid, args, out=8)
    assert reply.error == 0 and abi.WriteOut.unpack(reply.payload).size == 3
    st = os.stat(tree / "x")
    assert (tree / "x").read_bytes() == b"abc" and stat.S_IMODE(st.st_mode) == 0o755
    fs.close()
