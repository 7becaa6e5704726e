"""READDIRPLUS from a filesystem that looks entries up while listing (Filesystem.readdirplus).

The passthrough does, into the reply the server hands it: only entries that fit are looked
up, a listing that fails half way keeps what it packed, and an entry with a name the guest
must not see is dropped with its lookup taken back. A pseudo root passes a mount's listing
on with the mount's node numbers made its own.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fuseclient
from tests.support.fuse_driver import parse_dirents
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fs.pseudo import PseudoFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import (
    Context,
    DirEntry,
    FileHandle,
    Ino,
    PlusListing,
    ReadOnlyFilesystem,
)
from vhostfs.fuse.server import FuseServer

CTX = Context(0, 0, 0)
Op = abi.Opcode
NAMES = [f"f{i}".encode() for i in range(10)]
RECORD = abi.rec_align(abi.DirentplusHeader.SIZE + 2)  # a record with a 2-byte name


@pytest.fixture
def share(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    for name in NAMES:
        (tmp_path / "d" / name.decode()).write_bytes(name)
    return tmp_path


@pytest.fixture
def fs(share: Path) -> Iterator[PassthroughFilesystem]:
    pfs = PassthroughFilesystem(share, cache="auto")
    yield pfs
    pfs.close()


async def open_d(server: FuseServer, parent: int = 1) -> tuple[int, int]:
    looked = await fuseclient.call(server, Op.LOOKUP, parent, b"d\0")
    nodeid = abi.EntryOut.unpack_from(looked.payload).nodeid
    opened = await fuseclient.call(server, Op.OPENDIR, nodeid, abi.OpenIn(0, 0).pack())
    return nodeid, abi.OpenOut.unpack(opened.payload).fh


async def readdirplus(server: FuseServer, nodeid: int, fh: int, size: int) -> fuseclient.Reply:
    args = abi.ReadIn(fh, 0, size, 0, 0, 0, 0).pack()
    return await fuseclient.call(server, Op.READDIRPLUS, nodeid, args)


async def test_each_sent_entry_counts_one_lookup_and_the_unsent_one_none(
    fs: PassthroughFilesystem,
) -> None:
    server = FuseServer(ReadOnlyFilesystem(fs))
    await fuseclient.init(server)
    nodeid, fh = await open_d(server)
    # ".", ".." (1-byte and 2-byte names) and three files fit; the sixth record does not.
    reply = await readdirplus(server, nodeid, fh, 5 * RECORD + 8)
    sent = parse_dirents(reply.payload, plus=True)
    files = [d for d in sent if d.name not in (b".", b"..")]
    assert len(sent) == 5 and len(files) == 3
    for d in files:
        attr, _ = await fs.getattr(CTX, Ino(d.entry.nodeid), None)
        assert attr.size == len(d.name) and d.entry.attr.size == len(d.name)
        fs.forget(Ino(d.entry.nodeid), 1)
    fs.forget(Ino(nodeid), 1)
    # Exactly one reference each: after one forget apiece only the root is left, so the
    # entry pulled but not sent was forgotten too.
    assert len(fs.nodes) == 1


async def test_a_listing_that_fails_keeps_what_was_packed(
    fs: PassthroughFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FuseServer(ReadOnlyFilesystem(fs))
    await fuseclient.init(server)
    nodeid, fh = await open_d(server)
    real_stat = os.stat

    def failing_after(limit: int) -> object:
        calls = 0

        def stat(*args: object, **kwargs: object) -> os.stat_result:
            nonlocal calls
            calls += 1
            if calls > limit:
                raise OSError(errno.EIO, "disk on fire")
            return real_stat(*args, **kwargs)  # type: ignore[arg-type]

        return stat

    # ".", ".." and two files are packed, then the third file's lookup fails.
    monkeypatch.setattr("vhostfs.fs.passthrough.os.stat", failing_after(2))
    reply = await readdirplus(server, nodeid, fh, 4096)
    assert reply.error == 0
    assert [d.name for d in parse_dirents(reply.payload, plus=True)][:2] == [b".", b".."]
    assert len(parse_dirents(reply.payload, plus=True)) == 4
    # Nothing packed before the failure: the error is the reply. The listing resumes after
    # "." and "..", which are not looked up.
    monkeypatch.setattr("vhostfs.fs.passthrough.os.stat", failing_after(0))
    args = abi.ReadIn(fh, 2, 4096, 0, 0, 0, 0).pack()
    assert (await fuseclient.call(server, Op.READDIRPLUS, nodeid, args)).error == -errno.EIO


class _Hostile(PassthroughFilesystem):
    """A passthrough whose listing hands over one name no guest may see."""

    def __init__(self, share: Path) -> None:
        super().__init__(share, cache="auto")
        self.share = share

    async def readdirplus(self, ctx: Context, ino: Ino, fh: FileHandle, offset: int,
                          out: PlusListing) -> bool:  # fmt: skip
        listed = await super().readdirplus(ctx, ino, fh, offset, out)
        node = self.nodes.ref_known(_dev_ino(self.share / "d" / "f0"))
        assert node is not None
        st = os.lstat(self.share / "d" / "f0")
        out.add_stat(DirEntry(st.st_ino, b"a/b", 8, 99), node, st, 1.0)
        return listed


async def test_a_name_the_guest_must_not_see_is_dropped_with_its_lookup(share: Path) -> None:
    fs = _Hostile(share)
    server = FuseServer(ReadOnlyFilesystem(fs))
    await fuseclient.init(server)
    nodeid, fh = await open_d(server)
    reply = await readdirplus(server, nodeid, fh, 4096)
    listed = parse_dirents(reply.payload, plus=True)
    assert {d.name for d in listed} == {b".", b"..", *NAMES}
    # One reference per file sent: the dropped record's extra lookup was taken back.
    f0 = next(d for d in listed if d.name == b"f0")
    assert fs.nodes.lookups(Ino(f0.entry.nodeid)) == 1
    fs.close()


async def test_a_pseudo_mount_lists_with_its_outer_node_numbers(share: Path) -> None:
    root = PseudoFilesystem()
    inner = PassthroughFilesystem(share, cache="auto")
    await root.attach("/m", ReadOnlyFilesystem(inner), "PassthroughFs")
    server = FuseServer(root)
    await fuseclient.init(server)
    looked = await fuseclient.call(server, Op.LOOKUP, 1, b"m\0")
    mount = abi.EntryOut.unpack_from(looked.payload).nodeid
    nodeid, fh = await open_d(server, mount)
    reply = await readdirplus(server, nodeid, fh, 4096)
    listed = {d.name: d for d in parse_dirents(reply.payload, plus=True)}
    assert set(listed) == {b".", b"..", *NAMES}
    for name in NAMES:
        found = await root.lookup(CTX, Ino(nodeid), name)
        d = listed[name]
        assert (d.entry.nodeid, d.entry.attr.ino) == (found.ino, found.attr.ino)
        assert d.entry.nodeid != inner.nodes.find(_dev_ino(share / "d" / name.decode()))
    inner.close()


def _dev_ino(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino

