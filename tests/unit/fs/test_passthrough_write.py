"""WritablePassthroughFilesystem, the namespace: creating, linking, removing, renaming;
ownership of what is created and confinement to the shared directory. Runs as root, as
the daemon does."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.fs.writable import FAILED, ROOT, USER, WHITEOUT, create, lookup, make_tree
from vhostfs.errors import FsError
from vhostfs.fs import credentials, hostfd
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fs.passthrough_write import WritablePassthroughFilesystem
from vhostfs.fuse.filesystem import ROOT_INO, ReadOnlyFilesystem, decode_dev, encode_dev


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


@pytest.fixture(params=[True, False], ids=["handles", "names"])
def fs(tree: Path, request: pytest.FixtureRequest) -> Iterator[WritablePassthroughFilesystem]:
    wfs = WritablePassthroughFilesystem(tree, "auto", file_handles=request.param, fd_cache=8)
    assert wfs.use_handles is request.param
    yield wfs
    wfs.close()

# --- creating ---------------------------------------------------------------------------


async def test_create_write_read(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    entry, opened = await fs.create(ROOT, ROOT_INO, b"new", stat.S_IFREG | 0o644,
                                    os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o022)  # fmt: skip
    assert stat.S_ISREG(entry.attr.mode) and entry.attr.size == 0
    data = [memoryview(b"hello "), memoryview(bytearray(b"guest"))]
    assert await fs.write(ROOT, entry.ino, opened.fh, 0, data, 0) == 11
    buf = bytearray(32)
    assert await fs.read(ROOT, entry.ino, opened.fh, 6, [memoryview(buf)]) == 5
    assert bytes(buf[:5]) == b"guest"
    await fs.flush(ROOT, entry.ino, opened.fh, 0)
    await fs.fsync(ROOT, entry.ino, opened.fh, datasync=True)
    await fs.release(ROOT, entry.ino, opened.fh, 0)
    assert (tree / "new").read_bytes() == b"hello guest"
    attr, _ = await fs.getattr(ROOT, entry.ino, None)
    assert attr.size == 11 and attr.ino == os.stat(tree / "new").st_ino
    assert fs.nodes.lookups(entry.ino) == 1


async def test_umask_is_the_guests(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    process_umask = os.umask(0o077)
    try:
        await create(fs, ROOT_INO, b"wide", mode=0o777, umask=0)
        await create(fs, ROOT_INO, b"masked", mode=0o666, umask=0o027)
        await fs.mkdir(ROOT, ROOT_INO, b"d", stat.S_IFDIR | 0o775, 0o002)
        assert os.umask(0o077) == 0o077  # restored after each call
    finally:
        os.umask(process_umask)
    assert stat.S_IMODE(os.stat(tree / "wide").st_mode) == 0o777
    assert stat.S_IMODE(os.stat(tree / "masked").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tree / "d").st_mode) == 0o775


async def test_created_files_belong_to_the_caller(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    parent = await lookup(fs, "open")
    await create(fs, parent, b"f", ctx=USER)
    await fs.mkdir(USER, parent, b"d", stat.S_IFDIR | 0o755, 0)
    await fs.mknod(USER, parent, b"p", stat.S_IFIFO | 0o600, 0, 0)
    await fs.mknod(USER, parent, b"s", stat.S_IFSOCK | 0o755, 0, 0)
    entry = await fs.symlink(USER, parent, b"l", b"f")
    assert (entry.attr.uid, entry.attr.gid) == (1000, 1000)
    for name in ("f", "d", "p", "s", "l"):
        st = os.lstat(tree / "open" / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name
    assert credentials.current() == (0, 0)  # the daemon's own ids are back


async def test_setgid_directory_gives_its_group(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    shared = tree / "shared"
    shared.mkdir()
    os.chown(shared, 0, 2000)
    os.chmod(shared, 0o2777)
    parent = await lookup(fs, "shared")
    await create(fs, parent, b"f", ctx=USER)
    await fs.mkdir(USER, parent, b"sub", stat.S_IFDIR | 0o755, 0)
    assert os.stat(shared / "f").st_gid == 2000
    sub = os.stat(shared / "sub")
    assert sub.st_gid == 2000 and sub.st_mode & stat.S_ISGID and sub.st_uid == 1000


async def test_non_root_caller_cannot_write_into_a_0700_dir(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    private = await lookup(fs, "private")
    attempts = [
        fs.create(USER, private, b"f", stat.S_IFREG | 0o644, os.O_CREAT | os.O_WRONLY, 0),
        fs.mkdir(USER, private, b"d", stat.S_IFDIR | 0o755, 0),
        fs.mknod(USER, private, b"p", stat.S_IFIFO | 0o644, 0, 0),
        fs.symlink(USER, private, b"l", b"x"),
    ]
    for attempt in attempts:
        with pytest.raises(FAILED) as info:
            await attempt
        assert info.value.errno == errno.EACCES
    assert os.listdir(tree / "private") == []
    assert credentials.current() == (0, 0)
    await create(fs, private, b"f")  # root may
    assert os.stat(tree / "private" / "f").st_uid == 0


async def test_exists(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    for attempt in (
        fs.create(ROOT, ROOT_INO, b"file", stat.S_IFREG | 0o644,
                  os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0),
        fs.mkdir(ROOT, ROOT_INO, b"dir", stat.S_IFDIR | 0o755, 0),
        fs.mknod(ROOT, ROOT_INO, b"file", stat.S_IFIFO | 0o644, 0, 0),
        fs.symlink(ROOT, ROOT_INO, b"escape_abs", b"x"),
        fs.link(ROOT, await lookup(fs, "file"), ROOT_INO, b"dir"),
    ):  # fmt: skip
        with pytest.raises(FAILED) as info:
            await attempt
        assert info.value.errno == errno.EEXIST
    # Without O_EXCL an existing file is simply opened (a host-side race).
    ino = await create(fs, ROOT_INO, b"file", flags=os.O_CREAT | os.O_RDONLY)
    assert ino == await lookup(fs, "file")
    assert (tree / "file").read_bytes() == b"hello world"


async def test_create_never_follows_a_symlink(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    os.symlink(tree.parent / "secret", tree / "to_secret")
    os.symlink(tree.parent / "absent", tree / "dangling")
    for name in (b"to_secret", b"dangling"):
        with pytest.raises(FAILED) as info:
            await create(fs, ROOT_INO, name, flags=os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
        assert info.value.errno == errno.ELOOP
    assert (tree.parent / "secret").read_bytes() == b"outside"
    assert not (tree.parent / "absent").exists()


async def test_create_refuses_a_host_fifo(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    os.mkfifo(tree / "fifo")
    with pytest.raises(FsError) as info:  # must not block the event loop
        await create(fs, ROOT_INO, b"fifo", flags=os.O_CREAT | os.O_RDONLY)
    assert info.value.errno == errno.EEXIST


async def test_mknod_kinds(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    wh = await fs.mknod(ROOT, ROOT_INO, b"wh", WHITEOUT, 0, 0o022)
    assert stat.S_ISCHR(wh.attr.mode) and wh.attr.rdev == 0
    st = os.lstat(tree / "wh")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # what overlayfs calls a whiteout
    dev = os.makedev(8, 300)
    blk = await fs.mknod(ROOT, ROOT_INO, b"blk", stat.S_IFBLK | 0o600, encode_dev(dev), 0)
    assert os.lstat(tree / "blk").st_rdev == dev and blk.attr.rdev == encode_dev(dev)
    sock = await fs.mknod(ROOT, ROOT_INO, b"sock", stat.S_IFSOCK | 0o755, 0, 0)
    assert stat.S_ISSOCK(sock.attr.mode) and stat.S_ISSOCK(os.lstat(tree / "sock").st_mode)
    fifo = await fs.mknod(ROOT, ROOT_INO, b"fifo", stat.S_IFIFO | 0o640, 0, 0)
    assert stat.S_ISFIFO(fifo.attr.mode) and stat.S_IMODE(fifo.attr.mode) == 0o640
    reg = await fs.mknod(ROOT, ROOT_INO, b"reg", stat.S_IFREG | 0o600, 0, 0)
    assert stat.S_ISREG(reg.attr.mode)
    with pytest.raises(FsError) as info:
        await fs.mknod(ROOT, ROOT_INO, b"d", stat.S_IFDIR | 0o755, 0, 0)
    assert info.value.errno == errno.EINVAL
    parent = await lookup(fs, "open")
    with pytest.raises(FAILED) as denied:  # CAP_MKNOD is gone with fsuid != 0...
        await fs.mknod(USER, parent, b"null", stat.S_IFCHR | 0o666, encode_dev(0x103), 0)
    assert denied.value.errno == errno.EPERM
    await fs.mknod(USER, parent, b"wh", WHITEOUT, 0, 0)  # ...but whiteouts need none (5.8+)
    assert os.lstat(tree / "open" / "wh").st_uid == 1000


def test_rdev_round_trip() -> None:
    for major, minor in ((0, 0), (8, 1), (259, 70000), (4095, 0xFFFFF)):
        dev = os.makedev(major, minor)
        assert decode_dev(encode_dev(dev)) == dev


async def test_symlink_target_is_stored_not_followed(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    target = b"../../secret"
    entry = await fs.symlink(ROOT, ROOT_INO, b"evil", target)
    assert stat.S_ISLNK(entry.attr.mode) and entry.attr.size == len(target)
    assert await fs.readlink(ROOT, entry.ino) == target
    assert os.readlink(tree / "evil") == target.decode()
    for attempt in (
        fs.lookup(ROOT, entry.ino, b"secret"),
        fs.create(ROOT, entry.ino, b"x", stat.S_IFREG | 0o644, os.O_CREAT | os.O_WRONLY, 0),
        fs.mkdir(ROOT, entry.ino, b"x", stat.S_IFDIR | 0o755, 0),
        fs.mknod(ROOT, entry.ino, b"x", WHITEOUT, 0, 0),
        fs.symlink(ROOT, entry.ino, b"x", b"y"),
        fs.unlink(ROOT, entry.ino, b"secret"),
    ):
        with pytest.raises(FAILED) as info:
            await attempt
        assert info.value.errno in (errno.ENOTDIR, errno.ELOOP)
    assert (tree.parent / "secret").read_bytes() == b"outside"
    assert sorted(os.listdir(tree.parent)) == ["root", "secret"]


# --- links, removal ---------------------------------------------------------------------


async def test_link(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    file = await fs.lookup(ROOT, ROOT_INO, b"file")
    dir_ino = await lookup(fs, "dir")
    linked = await fs.link(ROOT, file.ino, dir_ino, b"again")
    assert linked.ino == file.ino and linked.attr.nlink == 2
    assert fs.nodes.lookups(file.ino) == 2
    assert os.stat(tree / "dir" / "again").st_ino == os.stat(tree / "file").st_ino
    with pytest.raises(FsError) as info:
        await fs.link(ROOT, dir_ino, ROOT_INO, b"dirlink")
    assert info.value.errno == errno.EPERM


async def test_link_of_a_symlink_links_the_symlink(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    esc = await fs.lookup(ROOT, ROOT_INO, b"escape_abs")
    dir_ino = await lookup(fs, "dir")
    linked = await fs.link(ROOT, esc.ino, dir_ino, b"esc2")
    assert stat.S_ISLNK(linked.attr.mode)
    assert os.readlink(tree / "dir" / "esc2") == "/etc"
    with pytest.raises(FAILED) as info:  # a symlink is never a parent
        await fs.link(ROOT, linked.ino, esc.ino, b"x")
    assert info.value.errno == errno.ENOTDIR


async def test_unlink_and_rmdir(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    dir_ino = await lookup(fs, "dir")
    with pytest.raises(FAILED) as info:
        await fs.rmdir(ROOT, ROOT_INO, b"dir")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(FAILED) as info:
        await fs.unlink(ROOT, ROOT_INO, b"dir")
    assert info.value.errno in (errno.EISDIR, errno.EPERM)
    with pytest.raises(FAILED) as info:
        await fs.rmdir(ROOT, ROOT_INO, b"file")
    assert info.value.errno == errno.ENOTDIR
    for op in (fs.unlink, fs.rmdir):
        with pytest.raises(FAILED) as info:
            await op(ROOT, ROOT_INO, b"nope")
        assert info.value.errno == errno.ENOENT
    await fs.unlink(ROOT, dir_ino, b"inner")
    await fs.rmdir(ROOT, ROOT_INO, b"dir")
    await fs.unlink(ROOT, ROOT_INO, b"escape_abs")  # the link, not /etc
    assert sorted(os.listdir(tree)) == ["escape_rel", "file", "open", "private"]
    assert stat.S_ISDIR(os.stat("/etc").st_mode)


async def test_removed_inode_number_gets_a_new_node(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    old = await create(fs, ROOT_INO, b"a")
    old_key = fs.nodes.key_of(old)
    await fs.unlink(ROOT, ROOT_INO, b"a")
    assert fs.nodes.find(old_key) is None  # the guest may still hold `old`...
    new = await create(fs, ROOT_INO, b"b")  # ...ext4 likely reuses the inode number
    assert new != old
    attr, _ = await fs.getattr(ROOT, new, None)
    assert attr.ino == os.stat(tree / "b").st_ino
    fs.forget(old, 1)
    assert fs.nodes.lookups(new) == 1


@pytest.mark.parametrize("name", [b"..", b".", b"../secret", b"a/b", b"", b"/etc", b"a\0b"])
async def test_names_that_could_escape(fs: WritablePassthroughFilesystem, name: bytes) -> None:
    file = await fs.lookup(ROOT, ROOT_INO, b"file")
    for attempt in (
        fs.create(ROOT, ROOT_INO, name, stat.S_IFREG | 0o644, os.O_CREAT | os.O_WRONLY, 0),
        fs.mkdir(ROOT, ROOT_INO, name, stat.S_IFDIR | 0o755, 0),
        fs.mknod(ROOT, ROOT_INO, name, WHITEOUT, 0, 0),
        fs.symlink(ROOT, ROOT_INO, name, b"t"),
        fs.link(ROOT, file.ino, ROOT_INO, name),
        fs.unlink(ROOT, ROOT_INO, name),
        fs.rmdir(ROOT, ROOT_INO, name),
        fs.rename(ROOT, ROOT_INO, b"file", ROOT_INO, name, 0),
        fs.rename(ROOT, ROOT_INO, name, ROOT_INO, b"x", 0),
    ):
        with pytest.raises(FsError) as info:
            await attempt
        assert info.value.errno == errno.EINVAL


# --- rename -----------------------------------------------------------------------------


async def test_rename_plain_and_over(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    file = await fs.lookup(ROOT, ROOT_INO, b"file")
    dir_ino = await lookup(fs, "dir")
    inner = await fs.lookup(ROOT, dir_ino, b"inner")
    await fs.rename(ROOT, ROOT_INO, b"file", dir_ino, b"moved", 0)
    assert (tree / "dir" / "moved").read_bytes() == b"hello world"
    fs._uncache_fd(file.ino)  # reopened by handle, or by its new parent and name
    attr, _ = await fs.getattr(ROOT, file.ino, None)
    assert attr.ino == file.attr.ino
    await fs.rename(ROOT, dir_ino, b"moved", dir_ino, b"inner", 0)  # replaces
    assert (tree / "dir" / "inner").read_bytes() == b"hello world"
    assert fs.nodes.find(fs.nodes.key_of(inner.ino)) is None  # its last link went
    with pytest.raises(FAILED) as info:
        await fs.rename(ROOT, ROOT_INO, b"nope", ROOT_INO, b"x", 0)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(FAILED) as info:  # into its own subdirectory
        await fs.rename(ROOT, ROOT_INO, b"dir", dir_ino, b"loop", 0)
    assert info.value.errno == errno.EINVAL
    (tree / "open" / "x").write_bytes(b"")
    with pytest.raises(FAILED) as info:
        await fs.rename(ROOT, ROOT_INO, b"dir", ROOT_INO, b"open", 0)
    assert info.value.errno in (errno.ENOTEMPTY, errno.EEXIST)


async def test_rename_noreplace(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    dir_ino = await lookup(fs, "dir")
    with pytest.raises(FAILED) as info:
        await fs.rename(ROOT, ROOT_INO, b"file", dir_ino, b"inner", hostfd.RENAME_NOREPLACE)
    assert info.value.errno == errno.EEXIST
    await fs.rename(ROOT, ROOT_INO, b"file", dir_ino, b"fresh", hostfd.RENAME_NOREPLACE)
    assert (tree / "dir" / "fresh").read_bytes() == b"hello world"


async def test_rename_exchange(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    file = await fs.lookup(ROOT, ROOT_INO, b"file")
    dir_ino = await lookup(fs, "dir")
    inner = await fs.lookup(ROOT, dir_ino, b"inner")
    await fs.rename(ROOT, ROOT_INO, b"file", dir_ino, b"inner", hostfd.RENAME_EXCHANGE)
    assert (tree / "file").read_bytes() == b"inner"
    assert (tree / "dir" / "inner").read_bytes() == b"hello world"
    for ino in (file.ino, inner.ino):  # both still known, both reachable
        fs._uncache_fd(ino)
        assert (await fs.getattr(ROOT, ino, None))[0].nlink == 1
    assert (await fs.lookup(ROOT, ROOT_INO, b"file")).ino == inner.ino
    with pytest.raises(FAILED) as info:
        await fs.rename(ROOT, ROOT_INO, b"file", ROOT_INO, b"nope", hostfd.RENAME_EXCHANGE)
    assert info.value.errno == errno.ENOENT


async def test_rename_whiteout(fs: WritablePassthroughFilesystem, tree: Path) -> None:
    dir_ino = await lookup(fs, "dir")
    await fs.rename(ROOT, ROOT_INO, b"file", dir_ino, b"moved", hostfd.RENAME_WHITEOUT)
    st = os.lstat(tree / "file")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert (tree / "dir" / "moved").read_bytes() == b"hello world"


async def test_rename_bad_flags(fs: WritablePassthroughFilesystem) -> None:
    with pytest.raises(FsError) as info:
        await fs.rename(ROOT, ROOT_INO, b"file", ROOT_INO, b"x", 1 << 5)
    assert info.value.errno == errno.EINVAL
    flags = hostfd.RENAME_EXCHANGE | hostfd.RENAME_NOREPLACE
    with pytest.raises(FAILED) as both:
        await fs.rename(ROOT, ROOT_INO, b"file", ROOT_INO, b"dir", flags)
    assert both.value.errno == errno.EINVAL


async def test_rename_cannot_leave_the_root(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    for link in (b"escape_rel", b"escape_abs"):
        esc = await fs.lookup(ROOT, ROOT_INO, link)
        with pytest.raises(FAILED) as info:
            await fs.rename(ROOT, ROOT_INO, b"file", esc.ino, b"secret", 0)
        assert info.value.errno == errno.ENOTDIR
        with pytest.raises(FAILED) as info:
            await fs.rename(ROOT, esc.ino, b"secret", ROOT_INO, b"stolen", 0)
        assert info.value.errno == errno.ENOTDIR
    await fs.rename(ROOT, ROOT_INO, b"escape_rel", ROOT_INO, b"renamed_link", 0)
    assert os.readlink(tree / "renamed_link") == "../.."  # the link moved, not its target
    assert (tree.parent / "secret").read_bytes() == b"outside"
    assert (tree / "file").read_bytes() == b"hello world"


# --- the read-only views ----------------------------------------------------------------


async def test_read_only_views_refuse_writes(tree: Path) -> None:
    ro = ReadOnlyFilesystem(WritablePassthroughFilesystem(tree))
    with pytest.raises(FsError) as info:
        await ro.mkdir(ROOT, ROOT_INO, b"x", stat.S_IFDIR | 0o755, 0)
    assert info.value.errno == errno.EROFS
    base = PassthroughFilesystem(tree)
    with pytest.raises(FsError) as info:
        await base.mkdir(ROOT, ROOT_INO, b"x", stat.S_IFDIR | 0o755, 0)
    assert info.value.errno == errno.ENOSYS
    assert not (await base.init()).killpriv_v2
    assert not (tree / "x").exists()
    base.close()


def test_caller_restores_ids_and_umask_on_error() -> None:
    old = os.umask(0o022)
    try:
        seen = []

        def switched() -> None:
            with credentials.caller(1000, 1001, 0o077):
                seen.append((credentials.current(), os.umask(0o077)))
                raise RuntimeError

        with pytest.raises(RuntimeError):
            switched()
        assert seen == [((1000, 1001), 0o077)]
        assert credentials.current() == (0, 0)
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)


def set_immutable(path: Path, on: bool) -> None:
    fs_ioc_getflags, fs_ioc_setflags, fs_immutable_fl = 0x80086601, 0x40086602, 0x10
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = bytearray(4)
        fcntl.ioctl(fd, fs_ioc_getflags, flags)
        value = int.from_bytes(flags, "little")
        value = value | fs_immutable_fl if on else value & ~fs_immutable_fl
        fcntl.ioctl(fd, fs_ioc_setflags, value.to_bytes(4, "little"))
    finally:
        os.close(fd)


async def test_eperm_from_the_host_keeps_openat2(
    fs: WritablePassthroughFilesystem, tree: Path
) -> None:
    set_immutable(tree / "file", True)
    try:
        with pytest.raises(FAILED) as info:
            await create(fs, ROOT_INO, b"file", flags=os.O_CREAT | os.O_WRONLY)
        assert info.value.errno == errno.EPERM
        assert hostfd._openat2_works  # an ordinary EPERM, not a missing syscall
    finally:
        set_immutable(tree / "file", False)
    assert (tree / "file").read_bytes() == b"hello world"
