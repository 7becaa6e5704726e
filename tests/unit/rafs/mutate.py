"""Exercising every reader path of a (possibly hostile) bootstrap, for the fuzz tests."""

from __future__ import annotations

import rafs
from rafs.image import UNEXPECTED_PREFIX

MAX_NODES = 2000  # a mutated image may claim more; the walk stops here


def exercise(buf: bytes) -> str:
    """Open `buf` and touch every inode reachable from the root.

    Returns "ok" or the name of the RafsError raised; any other exception propagates (a bug),
    and so does a RafsError produced by the safety net instead of real validation.
    """
    try:
        _walk(rafs.Image.from_bytes(buf))
    except rafs.RafsError as exc:
        if UNEXPECTED_PREFIX in str(exc):
            raise AssertionError(f"validation missed: {exc}") from exc
        return type(exc).__name__
    return "ok"


def _walk(image: rafs.Image) -> None:
    _ = (image.blobs, image.prefetch_inos, image.inode_count)
    seen: set[int] = set()
    stack = [image.root_ino]
    while stack and len(seen) < MAX_NODES:
        ino = stack.pop()
        if ino in seen:
            continue
        seen.add(ino)
        inode = image.inode(ino)
        image.xattrs(ino)
        if inode.is_dir:
            for _, name, child in image.readdir(ino):
                image.lookup(ino, name)
                stack.append(child.ino)
        elif inode.is_symlink:
            image.readlink(ino)
        elif inode.is_reg:
            rafs.plan_reads(image.file_chunks(ino, 0, inode.size))
    try:
        image.verify_inode_digests()
    except rafs.Unsupported:
        pass
