"""A 21k-file tree: more inodes than we may hold fds for, and readdir resume through FUSE."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fuseclient
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import ROOT_INO, Context, ReadOnlyFilesystem
from vhostfs.fuse.server import FuseServer

COUNT = 21_000
CTX = Context(0, 0, 0)
Op = abi.Opcode


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big")
    flat = root / "flat"
    flat.mkdir()
    for i in range(COUNT):
        fd = os.open(flat / f"f{i:05}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    return root


@pytest.fixture(params=[True, False], ids=["handles", "names"])
def fs(big_tree: Path, request: pytest.FixtureRequest) -> Iterator[PassthroughFilesystem]:
    pfs = PassthroughFilesystem(big_tree, file_handles=request.param, fd_cache=64)
    yield pfs
    pfs.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_many_inodes_do_not_grow_fds(fs: PassthroughFilesystem) -> None:
    before = open_fds()
    flat = (await fs.lookup(CTX, ROOT_INO, b"flat")).ino
    inos = [(await fs.lookup(CTX, flat, f"f{i:05}".encode())).ino for i in range(COUNT)]
    assert len(set(inos)) == COUNT and len(fs.nodes) == COUNT + 2
    assert open_fds() <= before + 64
    for ino in inos[:: COUNT // 50]:  # evicted long ago: reopened on demand
        attr, _ = await fs.getattr(CTX, ino, None)
        assert attr.size == 0
    assert open_fds() <= before + 64
    for ino in inos:
        fs.forget(ino, 1)
    assert len(fs.nodes) == 2


async def test_readdirplus_of_a_huge_directory(fs: PassthroughFilesystem) -> None:
    server = FuseServer(ReadOnlyFilesystem(fs))
    await fuseclient.init(server)
    looked = await fuseclient.call(server, Op.LOOKUP, 1, b"flat\0")
    flat = abi.EntryOut.unpack_from(looked.payload)
    opened = await fuseclient.call(server, Op.OPENDIR, flat.nodeid, abi.OpenIn(0, 0).pack())
    fh = abi.OpenOut.unpack(opened.payload).fh
    names: list[bytes] = []
    offset, requests = 0, 0
    while True:
        args = abi.ReadIn(fh, offset, 4096, 0, 0, 0, 0).pack()
        reply = await fuseclient.call(server, Op.READDIRPLUS, flat.nodeid, args)
        assert reply.error == 0
        if not reply.payload:
            break
        pos = 0
        while pos < len(reply.payload):
            rec = abi.DirentplusHeader.unpack_from(reply.payload, pos).dirent
            start = pos + abi.DirentplusHeader.SIZE
            names.append(reply.payload[start : start + rec.namelen])
            offset = rec.off
            pos += abi.rec_align(abi.DirentplusHeader.SIZE + rec.namelen)
        requests += 1
    assert len(names) == COUNT + 2 and len(set(names)) == COUNT + 2
    assert requests == -(-(COUNT + 2) // (4096 // 160))
    assert len(fs.nodes) == COUNT + 2  # every entry sent was looked up once
    assert len(fs.fd_cache) <= 64


async def test_readdir_seek_back_and_rewind(fs: PassthroughFilesystem) -> None:
    flat = (await fs.lookup(CTX, ROOT_INO, b"flat")).ino
    opened = await fs.opendir(CTX, flat, 0)

    async def names(offset: int, count: int) -> list[bytes]:
        entries = await fs.readdir(CTX, flat, opened.fh, offset)
        return [e.name for e in itertools.islice(entries, count)]

    first = await names(0, 100)
    later = await names(5000, 5)
    back = await names(50, 3)
    again = await names(0, 100)
    assert first == again and back == first[50:53] and len(set(later) & set(first)) == 0
    await fs.releasedir(CTX, flat, opened.fh)
