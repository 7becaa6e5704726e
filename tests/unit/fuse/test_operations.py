"""Every implemented opcode's happy path and error path, against MemoryFilesystem."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.support import fuseclient
from tests.support.fuseclient import call, cstr, raw
from tests.support.memoryfs import MemoryFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import Filesystem, FsOptions
from vhostfs.fuse.server import FuseServer

Op = abi.Opcode


def entry_of(payload: bytes) -> abi.EntryOut:
    return abi.EntryOut.unpack_from(payload)


async def open_file(srv: FuseServer, ino: int, op: int = Op.OPEN, flags: int = 0) -> int:
    reply = await call(srv, op, ino, abi.OpenIn(flags, 0).pack())
    assert reply.error == 0
    return abi.OpenOut.unpack(reply.payload).fh


# --- names and attributes ----------------------------------------------------------------


async def test_lookup(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"hello", b"12345")
    reply = await call(server, Op.LOOKUP, 1, b"hello\0")
    assert reply.used == 16 + 128 and reply.header == abi.OutHeader(144, 0, 2)
    out = entry_of(reply.payload)
    assert (out.nodeid, out.attr.ino, out.attr.size) == (ino, ino, 5)
    assert (out.head.entry_valid, out.head.entry_valid_nsec, out.head.attr_valid) == (1, 0, 1)
    assert stat.S_ISREG(out.attr.mode)
    assert memfs.lookups[ino] == 1


async def test_lookup_missing(server: FuseServer) -> None:
    reply = await call(server, Op.LOOKUP, 1, b"nope\0")
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.ENOENT, 2)


async def test_lookup_dotdot_only_with_export_support(server: FuseServer) -> None:
    reply = await call(server, Op.LOOKUP, 1, b"..\0")
    assert reply.error == -errno.EINVAL
    srv = FuseServer(MemoryFilesystem(FsOptions(export_support=True)))
    await fuseclient.init(srv)
    ok = await call(srv, Op.LOOKUP, 1, b"..\0")
    assert ok.error == 0 and entry_of(ok.payload).nodeid == 1


async def test_forget_has_no_reply(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    for _ in range(3):
        await call(server, Op.LOOKUP, 1, b"f\0")
    reply = await call(server, Op.FORGET, ino, abi.ForgetIn(2).pack(), out=0)
    assert reply.used == 0 and reply.out == bytes(16)
    assert memfs.lookups[ino] == 1


async def test_batch_forget(server: FuseServer, memfs: MemoryFilesystem) -> None:
    a, b = memfs.add_file(b"a"), memfs.add_file(b"b")
    for name in (b"a\0", b"b\0", b"b\0"):
        await call(server, Op.LOOKUP, 1, name)
    args = abi.BatchForgetIn(2, 0).pack() + abi.ForgetOne(a, 1).pack() + abi.ForgetOne(b, 1).pack()
    reply = await call(server, Op.BATCH_FORGET, 0, args, out=0)
    assert reply.used == 0
    assert memfs.lookups == {b: 1}


async def test_getattr(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f", b"abc")
    reply = await call(server, Op.GETATTR, ino, abi.GetattrIn(0, 0, 0).pack())
    assert reply.used == 120 and reply.header == abi.OutHeader(120, 0, 2)
    out = abi.AttrOut.unpack(reply.payload)
    assert (out.head.attr_valid, out.attr.ino, out.attr.size, out.attr.nlink) == (1, ino, 3, 1)


async def test_getattr_with_bad_fh(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    reply = await call(server, Op.GETATTR, ino, abi.GetattrIn(abi.GETATTR_FH, 0, 99).pack())
    assert reply.header == abi.OutHeader(16, -errno.EBADF, 2)


async def test_setattr(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f", b"abcdef")
    v = abi.SetattrValid
    arg = abi.SetattrIn(v.SIZE | v.MODE | v.MTIME, 0, 0, 2, 0, 0, 1_700_000_000, 0, 0, 5, 0,
                        0o600, 0, 0, 0, 0)  # fmt: skip
    reply = await call(server, Op.SETATTR, ino, arg.pack())
    out = abi.AttrOut.unpack(reply.payload)
    assert out.attr.size == 2 and stat.S_IMODE(out.attr.mode) == 0o600
    assert memfs.nodes[ino].mtime_ns == 1_700_000_000 * 10**9 + 5


async def test_setattr_bad_nsec(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    arg = abi.SetattrIn(abi.SetattrValid.ATIME, 0, 0, 0, 0, 1, 0, 0, 10**9, 0, 0, 0, 0, 0, 0, 0)
    reply = await call(server, Op.SETATTR, ino, arg.pack())
    assert reply.error == -errno.EINVAL


async def test_readlink(server: FuseServer, memfs: MemoryFilesystem) -> None:
    link = memfs.add(1, b"l", stat.S_IFLNK | 0o777, target=b"some/where")
    reply = await call(server, Op.READLINK, link, out=4095)
    assert reply.payload == b"some/where" and reply.used == 26
    plain = await call(server, Op.READLINK, memfs.add_file(b"f"), out=4095)
    assert plain.error == -errno.EINVAL


async def test_statfs(server: FuseServer) -> None:
    reply = await call(server, Op.STATFS, 1, out=80)
    assert reply.used == 96
    st = abi.KStatfs.unpack(reply.payload)
    assert (st.blocks, st.bsize, st.namelen) == (1000, 4096, 255)


async def test_access(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    assert (await call(server, Op.ACCESS, ino, abi.AccessIn(os.R_OK, 0).pack())).error == 0
    denied = await call(server, Op.ACCESS, ino, abi.AccessIn(os.X_OK, 0).pack())
    assert denied.header == abi.OutHeader(16, -errno.EACCES, 2)


# --- namespace ---------------------------------------------------------------------------


async def test_symlink(server: FuseServer, memfs: MemoryFilesystem) -> None:
    reply = await call(server, Op.SYMLINK, 1, cstr(b"l", b"../t"))
    out = entry_of(reply.payload)
    assert stat.S_ISLNK(out.attr.mode) and memfs.nodes[out.nodeid].target == b"../t"
    again = await call(server, Op.SYMLINK, 1, cstr(b"l", b"x"))
    assert again.error == -errno.EEXIST


async def test_symlink_missing_target(server: FuseServer) -> None:
    reply = await call(server, Op.SYMLINK, 1, cstr(b"l"))
    assert reply.error == -errno.EINVAL


async def test_mknod(server: FuseServer, memfs: MemoryFilesystem) -> None:
    arg = abi.MknodIn(stat.S_IFIFO | 0o666, 0, 0o022, 0).pack()
    reply = await call(server, Op.MKNOD, 1, arg + b"p\0")
    out = entry_of(reply.payload)
    assert out.attr.mode == stat.S_IFIFO | 0o644


async def test_mkdir_and_rmdir(server: FuseServer, memfs: MemoryFilesystem) -> None:
    reply = await call(server, Op.MKDIR, 1, abi.MkdirIn(0o777, 0o022).pack() + b"d\0")
    out = entry_of(reply.payload)
    assert out.attr.mode == stat.S_IFDIR | 0o755
    memfs.add_file(b"x", parent=out.nodeid)
    busy = await call(server, Op.RMDIR, 1, b"d\0")
    assert busy.error == -errno.ENOTEMPTY
    await call(server, Op.UNLINK, out.nodeid, b"x\0")
    done = await call(server, Op.RMDIR, 1, b"d\0")
    assert done.header == abi.OutHeader(16, 0, 2)
    assert b"d" not in memfs.nodes[1].children


async def test_mkdir_dot_is_einval(server: FuseServer) -> None:
    reply = await call(server, Op.MKDIR, 1, abi.MkdirIn(0o777, 0).pack() + b".\0")
    assert reply.header == abi.OutHeader(16, -errno.EINVAL, 2)


async def test_unlink(server: FuseServer, memfs: MemoryFilesystem) -> None:
    memfs.add_file(b"f")
    assert (await call(server, Op.UNLINK, 1, b"f\0")).error == 0
    assert (await call(server, Op.UNLINK, 1, b"f\0")).error == -errno.ENOENT


async def test_rename_and_rename2(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"a")
    d = memfs.add_dir(b"d")
    reply = await call(server, Op.RENAME, 1, abi.RenameIn(d).pack() + cstr(b"a", b"b"))
    assert reply.error == 0 and memfs.nodes[d].children == {b"b": ino}
    memfs.add_file(b"c", parent=d)
    noreplace = abi.Rename2In(d, 1, 0).pack() + cstr(b"b", b"c")
    assert (await call(server, Op.RENAME2, d, noreplace)).error == -errno.EEXIST
    ok = abi.Rename2In(1, 0, 0).pack() + cstr(b"b", b"z")
    assert (await call(server, Op.RENAME2, d, ok)).error == 0
    assert memfs.nodes[1].children[b"z"] == ino


async def test_rename_with_one_name_is_einval(server: FuseServer) -> None:
    reply = await call(server, Op.RENAME, 1, abi.RenameIn(1).pack() + cstr(b"a"))
    assert reply.error == -errno.EINVAL


async def test_link(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"a")
    reply = await call(server, Op.LINK, 1, abi.LinkIn(ino).pack() + b"b\0")
    out = entry_of(reply.payload)
    assert out.nodeid == ino and out.attr.nlink == 2
    again = await call(server, Op.LINK, 1, abi.LinkIn(ino).pack() + b"b\0")
    assert again.error == -errno.EEXIST


# --- files ---------------------------------------------------------------------------------


async def test_open_read_release(server: FuseServer, memfs: MemoryFilesystem) -> None:
    data = bytes(range(256)) * 40
    ino = memfs.add_file(b"f", data)
    reply = await call(server, Op.OPEN, ino, abi.OpenIn(os.O_RDONLY, 0).pack())
    out = abi.OpenOut.unpack(reply.payload)
    assert out.open_flags == abi.OpenOutFlags.KEEP_CACHE
    args = abi.ReadIn(out.fh, 100, 8192, 0, 0, 0, 0).pack()
    # the reply is scattered over three writable buffers of the chain
    got = await raw(server, [fuseclient.in_header(Op.READ, ino, 40), args], [16, 4096, 4096])
    assert got.used == 16 + 8192 and got.header == abi.OutHeader(8208, 0, 2)
    assert got.payload == data[100 : 100 + 8192]
    tail = await call(server, Op.READ, ino, abi.ReadIn(out.fh, 10000, 4096, 0, 0, 0, 0).pack())
    assert tail.used == 16 + 240 and tail.payload == data[10000:]
    rel = await call(server, Op.RELEASE, ino, abi.ReleaseIn(out.fh, 0, 0, 0).pack(), out=0)
    assert rel.header == abi.OutHeader(16, 0, 2)
    assert memfs.handles == {}


async def test_read_bad_handle(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f", b"x")
    reply = await call(server, Op.READ, ino, abi.ReadIn(42, 0, 10, 0, 0, 0, 0).pack())
    assert reply.header == abi.OutHeader(16, -errno.EBADF, 2)


async def test_read_clamped_to_buffer(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f", b"y" * 10000)
    fh = await open_file(server, ino)
    reply = await call(server, Op.READ, ino, abi.ReadIn(fh, 0, 1 << 20, 0, 0, 0, 0).pack())
    assert reply.used == 4096 + 16


async def test_write(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f", b"hello world")
    fh = await open_file(server, ino, flags=os.O_RDWR)
    args = abi.WriteIn(fh, 6, 5, 0, 0, 0, 0).pack()
    reply = await raw(server, [fuseclient.in_header(Op.WRITE, ino, 45), args, b"WO", b"RLD"],
                      [16, 8])  # fmt: skip
    assert reply.used == 24 and abi.WriteOut.unpack(reply.payload).size == 5
    assert memfs.nodes[ino].data == b"hello WORLD"


async def test_write_size_lies(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    fh = await open_file(server, ino, flags=os.O_RDWR)
    args = abi.WriteIn(fh, 0, 100, 0, 0, 0, 0).pack() + b"abc"
    reply = await call(server, Op.WRITE, ino, args, out=8)
    assert reply.header == abi.OutHeader(16, -errno.EINVAL, 2)
    assert memfs.nodes[ino].data == b""


async def test_create(server: FuseServer, memfs: MemoryFilesystem) -> None:
    args = abi.CreateIn(os.O_CREAT | os.O_RDWR, 0o666, 0o022, 0).pack() + b"new\0"
    reply = await call(server, Op.CREATE, 1, args)
    assert reply.used == 16 + 128 + 16
    out = entry_of(reply.payload)
    opened = abi.OpenOut.unpack_from(reply.payload, 128)
    assert out.attr.mode == stat.S_IFREG | 0o644
    assert opened.open_flags == abi.OpenOutFlags.DIRECT_IO
    assert memfs.handles[opened.fh] == out.nodeid
    again = await call(server, Op.CREATE, 1, args)
    assert again.error == -errno.EEXIST


async def test_tmpfile(server: FuseServer, memfs: MemoryFilesystem) -> None:
    # Laid out as the Linux guest sends it: fuse_create_in, then the VFS's "/" placeholder.
    args = abi.CreateIn(os.O_TMPFILE | os.O_RDWR, stat.S_IFREG | 0o666, 0o022, 0).pack()
    header = fuseclient.in_header(Op.TMPFILE, 1, len(args) + 2, uid=1000, gid=100)
    reply = await raw(server, [header, args, b"/\0"], [16, 128, 16])
    assert reply.used == 16 + 128 + 16 and reply.error == 0
    out = entry_of(reply.payload)
    opened = abi.OpenOut.unpack_from(reply.payload, 128)
    assert (out.attr.mode, out.attr.nlink) == (stat.S_IFREG | 0o644, 0)
    assert (out.attr.uid, out.attr.gid) == (1000, 100)
    assert opened.open_flags == abi.OpenOutFlags.DIRECT_IO
    assert memfs.handles[opened.fh] == out.nodeid and memfs.lookups[out.nodeid] == 1
    assert memfs.nodes[1].children == {}  # unnamed until linked
    link = await call(server, Op.LINK, 1, abi.LinkIn(out.nodeid).pack() + b"named\0")
    assert link.error == 0 and entry_of(link.payload).nodeid == out.nodeid
    assert memfs.nodes[1].children == {b"named": out.nodeid}


@pytest.mark.parametrize("name", [b"", b"/", b"/\0x\0"], ids=["none", "no-nul", "two"])
async def test_tmpfile_malformed_name(server: FuseServer, memfs: MemoryFilesystem,
                                      name: bytes) -> None:  # fmt: skip
    args = abi.CreateIn(os.O_TMPFILE | os.O_RDWR, stat.S_IFREG | 0o600, 0, 0).pack() + name
    reply = await call(server, Op.TMPFILE, 1, args)
    assert reply.header == abi.OutHeader(16, -errno.EINVAL, 2)
    assert len(memfs.nodes) == 1 and memfs.handles == {}


async def test_tmpfile_on_a_filesystem_without_it() -> None:
    srv = FuseServer(Filesystem())
    await fuseclient.init(srv)
    args = abi.CreateIn(os.O_TMPFILE | os.O_RDWR, stat.S_IFREG | 0o600, 0, 0).pack() + b"/\0"
    reply = await call(srv, Op.TMPFILE, 1, args)
    assert reply.header == abi.OutHeader(16, -errno.ENOSYS, 2)  # the guest: EOPNOTSUPP


async def test_flush_fsync_fallocate(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    fh = await open_file(server, ino)
    assert (await call(server, Op.FLUSH, ino, abi.FlushIn(fh, 0, 0, 7).pack())).error == 0
    assert (await call(server, Op.FSYNC, ino, abi.FsyncIn(fh, 1, 0).pack())).error == 0
    alloc = abi.FallocateIn(fh, 0, 4096, 0, 0).pack()
    assert (await call(server, Op.FALLOCATE, ino, alloc)).error == 0
    assert len(memfs.nodes[ino].data) == 4096
    punch = abi.FallocateIn(fh, 0, 4096, 3, 0).pack()
    assert (await call(server, Op.FALLOCATE, ino, punch)).error == -errno.EOPNOTSUPP
    bad = await call(server, Op.FLUSH, ino, abi.FlushIn(fh + 1, 0, 0, 7).pack())
    assert bad.error == -errno.EBADF


async def test_lseek(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f", b"x" * 100)
    fh = await open_file(server, ino)
    reply = await call(server, Op.LSEEK, ino, abi.LseekIn(fh, 10, os.SEEK_HOLE, 0).pack())
    assert reply.used == 24 and abi.LseekOut.unpack(reply.payload).offset == 100
    past = await call(server, Op.LSEEK, ino, abi.LseekIn(fh, 200, os.SEEK_DATA, 0).pack())
    assert past.error == -errno.ENXIO


async def test_syncfs(server: FuseServer, memfs: MemoryFilesystem) -> None:
    reply = await call(server, Op.SYNCFS, 1, abi.SyncfsIn(0).pack(), out=0)
    assert reply.header == abi.OutHeader(16, 0, 2) and memfs.calls == ["syncfs"]


async def test_interrupt_is_ignored(server: FuseServer) -> None:
    reply = await call(server, Op.INTERRUPT, 0, abi.InterruptIn(4).pack(), out=0)
    assert reply.used == 0


# --- xattrs --------------------------------------------------------------------------------


async def test_xattrs(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    args = abi.SetxattrInCompat(3, 0).pack() + b"user.a/b\0" + b"val"
    assert (await call(server, Op.SETXATTR, ino, args)).error == 0
    probe = await call(server, Op.GETXATTR, ino, abi.GetxattrIn(0, 0).pack() + b"user.a/b\0")
    assert probe.used == 24 and abi.GetxattrOut.unpack(probe.payload).size == 3
    small = await call(server, Op.GETXATTR, ino, abi.GetxattrIn(2, 0).pack() + b"user.a/b\0")
    assert small.header == abi.OutHeader(16, -errno.ERANGE, 2)
    full = await call(server, Op.GETXATTR, ino, abi.GetxattrIn(64, 0).pack() + b"user.a/b\0")
    assert full.payload == b"val"
    lst = await call(server, Op.LISTXATTR, ino, abi.GetxattrIn(64, 0).pack())
    assert lst.payload == b"user.a/b\0"
    size = await call(server, Op.LISTXATTR, ino, abi.GetxattrIn(0, 0).pack())
    assert abi.GetxattrOut.unpack(size.payload).size == 9
    assert (await call(server, Op.REMOVEXATTR, ino, b"user.a/b\0")).error == 0
    gone = await call(server, Op.GETXATTR, ino, abi.GetxattrIn(64, 0).pack() + b"user.a/b\0")
    assert gone.error == -errno.ENODATA
    assert (await call(server, Op.REMOVEXATTR, ino, b"user.a/b\0")).error == -errno.ENODATA


async def test_setxattr_value_size_lies(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    args = abi.SetxattrInCompat(10, 0).pack() + b"user.a\0" + b"val"
    assert (await call(server, Op.SETXATTR, ino, args)).error == -errno.EINVAL
    assert memfs.nodes[ino].xattrs == {}


async def test_setxattr_extended_form() -> None:
    fs = MemoryFilesystem(FsOptions(posix_acl=True))
    srv = FuseServer(fs)
    await fuseclient.init(srv)
    ino = fs.add_file(b"f")
    args = abi.SetxattrIn(1, os.XATTR_CREATE, abi.SETXATTR_ACL_KILL_SGID, 0).pack()
    assert (await call(srv, Op.SETXATTR, ino, args + b"user.x\0" + b"1")).error == 0
    assert fs.nodes[ino].xattrs == {b"user.x": b"1"}
    again = await call(srv, Op.SETXATTR, ino, args + b"user.x\0" + b"1")
    assert again.error == -errno.EEXIST


# --- directories ---------------------------------------------------------------------------


def parse_dirents(payload: bytes, plus: bool = False) -> list[tuple[bytes, int, int]]:
    """(name, off, nodeid) of each record; nodeid is 0 for plain dirents."""
    out, pos = [], 0
    size = abi.DirentplusHeader.SIZE if plus else abi.DirentHeader.SIZE
    while pos < len(payload):
        if plus:
            full = abi.DirentplusHeader.unpack_from(payload, pos)
            rec, nodeid = full.dirent, full.head.nodeid
        else:
            rec, nodeid = abi.DirentHeader.unpack_from(payload, pos), 0
        name = payload[pos + size : pos + size + rec.namelen]
        out.append((name, rec.off, nodeid))
        pos += abi.rec_align(size + rec.namelen)
    assert pos == len(payload)
    return out


async def test_readdir_resumes_by_cookie(server: FuseServer, memfs: MemoryFilesystem) -> None:
    names = [f"file{i:03}".encode() for i in range(50)]
    for name in names:
        memfs.add_file(name)
    fh = await open_file(server, 1, Op.OPENDIR)
    seen: list[bytes] = []
    offset, rounds = 0, 0
    while True:
        reply = await call(server, Op.READDIR, 1, abi.ReadIn(fh, offset, 256, 0, 0, 0, 0).pack())
        assert reply.error == 0 and reply.used - 16 <= 256
        ents = parse_dirents(reply.payload)
        if not ents:
            break
        seen += [n for n, _, _ in ents]
        offset = ents[-1][1]
        rounds += 1
    assert seen == [b".", b"..", *names]
    assert rounds == 7  # 8 records of 32 bytes per 256-byte buffer
    rel = await call(server, Op.RELEASEDIR, 1, abi.ReleaseIn(fh, 0, 0, 0).pack())
    assert rel.error == 0 and memfs.handles == {}


async def test_readdir_bad_handle(server: FuseServer) -> None:
    reply = await call(server, Op.READDIR, 1, abi.ReadIn(77, 0, 4096, 0, 0, 0, 0).pack())
    assert reply.header == abi.OutHeader(16, -errno.EBADF, 2)


async def test_readdirplus_counts_lookups(server: FuseServer, memfs: MemoryFilesystem) -> None:
    a, b = memfs.add_file(b"a"), memfs.add_dir(b"b")
    fh = await open_file(server, 1, Op.OPENDIR)
    reply = await call(server, Op.READDIRPLUS, 1, abi.ReadIn(fh, 0, 4096, 0, 0, 0, 0).pack())
    ents = parse_dirents(reply.payload, plus=True)
    assert ents == [(b".", 1, 0), (b"..", 2, 0), (b"a", 3, a), (b"b", 4, b)]
    assert memfs.lookups == {a: 1, b: 1}


async def test_readdirplus_stops_when_full(server: FuseServer, memfs: MemoryFilesystem) -> None:
    a = memfs.add_file(b"a")
    memfs.add_file(b"b")
    fh = await open_file(server, 1, Op.OPENDIR)
    size = 3 * 160  # ".", "..", "a" fit; "b" does not
    reply = await call(server, Op.READDIRPLUS, 1, abi.ReadIn(fh, 0, size, 0, 0, 0, 0).pack())
    assert [n for n, _, _ in parse_dirents(reply.payload, plus=True)] == [b".", b"..", b"a"]
    assert memfs.lookups == {a: 1}  # "b" was never looked up


async def test_readdirplus_skips_raced_entries(
    server: FuseServer, memfs: MemoryFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    memfs.add_file(b"a")
    b = memfs.add_file(b"b")
    fh = await open_file(server, 1, Op.OPENDIR)
    real = memfs._listing

    def listing_then_unlink(names, offset):  # type: ignore[no-untyped-def]
        for d in real(names, offset):
            memfs.nodes[1].children.pop(b"a", None)  # "a" vanishes before its lookup
            yield d

    monkeypatch.setattr(memfs, "_listing", listing_then_unlink)
    reply = await call(server, Op.READDIRPLUS, 1, abi.ReadIn(fh, 0, 4096, 0, 0, 0, 0).pack())
    assert [n for n, _, _ in parse_dirents(reply.payload, plus=True)] == [b".", b"..", b"b"]
    assert memfs.lookups == {b: 1}


async def test_fsyncdir(server: FuseServer) -> None:
    fh = await open_file(server, 1, Op.OPENDIR)
    assert (await call(server, Op.FSYNCDIR, 1, abi.FsyncIn(fh, 0, 0).pack())).error == 0


async def test_opendir_on_file(server: FuseServer, memfs: MemoryFilesystem) -> None:
    ino = memfs.add_file(b"f")
    reply = await call(server, Op.OPENDIR, ino, abi.OpenIn(0, 0).pack())
    assert reply.header == abi.OutHeader(16, -errno.ENOTDIR, 2)


# --- unsupported ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [Op.GETLK, Op.SETLK, Op.SETLKW, Op.IOCTL, Op.POLL, Op.BMAP, Op.COPY_FILE_RANGE,
     Op.STATX, Op.SETUPMAPPING, Op.REMOVEMAPPING, Op.NOTIFY_REPLY, 7, 99, 4096],
)  # fmt: skip
async def test_unsupported_opcodes_are_enosys(server: FuseServer, op: int) -> None:
    reply = await call(server, op, 1, bytes(40), unique=10)
    assert reply.used == 16 and reply.header == abi.OutHeader(16, -errno.ENOSYS, 10)
