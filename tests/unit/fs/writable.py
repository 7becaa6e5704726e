"""A host tree and helpers shared by the writable passthrough tests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vhostfs.errors import FsError
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fs.passthrough_write import WritablePassthroughFilesystem
from vhostfs.fuse.filesystem import ROOT_INO, Context, Ino

ROOT = Context(0, 0, 0)
USER = Context(1000, 1000, 42)
WHITEOUT = stat.S_IFCHR  # overlayfs whiteout: char device 0:0, mode 0
FAILED = (OSError, FsError)  # host errors arrive as OSError, our own checks as FsError


def make_tree(tmp_path: Path) -> Path:
    """tmp_path/root with a file, a dir, a 0777 and a 0700 dir, escaping symlinks; and
    tmp_path/secret outside it, which no test may ever change."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "file").write_bytes(b"hello world")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_bytes(b"inner")
    (root / "open").mkdir()
    os.chmod(root / "open", 0o777)
    (root / "private").mkdir(mode=0o700)
    os.symlink("/etc", root / "escape_abs")
    os.symlink("../..", root / "escape_rel")
    (tmp_path / "secret").write_bytes(b"outside")
    return root


async def lookup(fs: PassthroughFilesystem, path: str, ctx: Context = ROOT) -> Ino:
    ino = ROOT_INO
    for part in path.split("/"):
        ino = (await fs.lookup(ctx, ino, part.encode())).ino
    return ino


async def create(fs: WritablePassthroughFilesystem, parent: Ino, name: bytes,
                 ctx: Context = ROOT, mode: int = 0o644, umask: int = 0,
                 flags: int = os.O_RDWR | os.O_CREAT | os.O_EXCL) -> Ino:  # fmt: skip
    """CREATE and RELEASE, as `touch` would; returns the node id."""
    entry, opened = await fs.create(ctx, parent, name, stat.S_IFREG | mode, flags, umask)
    await fs.release(ctx, entry.ino, opened.fh, 0)
    return entry.ino
