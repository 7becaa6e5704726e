"""Creating 21k files: more inodes than RLIMIT_NOFILE (20,000 here) allows fds for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vhostfs.fs.passthrough_write import WritablePassthroughFilesystem
from vhostfs.fuse.filesystem import ROOT_INO, Context

COUNT = 21_000
FD_CACHE = 64
CTX = Context(1000, 1000, 7)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("handles", [True, False], ids=["handles", "names"])
async def test_creating_many_files_keeps_fds_bounded(tmp_path: Path, handles: bool) -> None:
    before = open_fds()
    fs = WritablePassthroughFilesystem(tmp_path, file_handles=handles, fd_cache=FD_CACHE)
    flat = await fs.mkdir(Context(0, 0, 0), ROOT_INO, b"flat", stat.S_IFDIR | 0o755, 0o022)
    os.chown(tmp_path / "flat", CTX.uid, CTX.gid)
    inos = []
    for i in range(COUNT):
        name = f"f{i:05}".encode()
        if i % 2:  # the guest creates both ways: CREATE (open handle) and MKNOD
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
            entry, opened = await fs.create(CTX, flat.ino, name, stat.S_IFREG | 0o644, flags, 0o22)
            await fs.write(CTX, entry.ino, opened.fh, 0, [memoryview(name)], 0)
            await fs.release(CTX, entry.ino, opened.fh, 0)
        else:
            entry = await fs.mknod(CTX, flat.ino, name, stat.S_IFREG | 0o644, 0, 0o022)
        inos.append(entry.ino)
        if i % 5000 == 0:
            assert open_fds() <= before + FD_CACHE + 4
    assert len(set(inos)) == COUNT and len(fs.nodes) == COUNT + 2
    assert open_fds() <= before + FD_CACHE + 4
    assert len(os.listdir(tmp_path / "flat")) == COUNT
    st = os.stat(tmp_path / "flat" / "f00001")
    assert st.st_uid == 1000 and st.st_size == 6 and stat.S_IMODE(st.st_mode) == 0o644
    for ino in inos[:: COUNT // 20]:  # long evicted: reopened on demand
        attr, _ = await fs.getattr(CTX, ino, None)
        assert attr.uid == 1000
    for i, ino in enumerate(inos):  # and removed again, as a guest's rm -rf does
        await fs.unlink(CTX, flat.ino, f"f{i:05}".encode())
        fs.forget(ino, 1)
    await fs.rmdir(CTX, ROOT_INO, b"flat")
    assert len(fs.nodes) == 2 and open_fds() <= before + FD_CACHE + 4
    fs.close()
    assert open_fds() == before
