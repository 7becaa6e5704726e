"""Walking an image's tree through the reader's public API (iteratively, cycle-safe)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import FormatError, NotADirectory, NotFound
from ..image import Image
from ..inode import Inode

MAX_ENTRIES = 50_000_000  # bound on names visited: a hostile image cannot make us loop


def walk(image: Image) -> Iterator[tuple[bytes, Inode]]:
    """(path, inode) of every name, depth-first pre-order, "." and ".." skipped.

    Each directory is entered once, so a bootstrap whose directories form a cycle ends
    with FormatError instead of looping.
    """
    stack: list[tuple[bytes, Inode]] = [(b"/", image.inode(image.root_ino))]
    entered: set[int] = set()
    count = 0
    while stack:
        path, inode = stack.pop()
        yield path, inode
        if not inode.is_dir:
            continue
        if inode.ino in entered:
            raise FormatError(f"image tree: directory {path!r} entered twice")
        entered.add(inode.ino)
        children = []
        for _, name, child in image.readdir(inode.ino):
            if name in (b".", b".."):
                continue
            count += 1
            if count > MAX_ENTRIES or b"/" in name or not name:
                raise FormatError(f"image tree: bad or too many entries ({name[:40]!r})")
            children.append((path.rstrip(b"/") + b"/" + name, child))
        stack.extend(reversed(children))


def resolve(image: Image, path: str) -> Inode:
    """The inode at `path` (absolute or relative to the root; symlinks not followed)."""
    inode = image.inode(image.root_ino)
    for part in path.encode().split(b"/"):
        if part in (b"", b"."):
            continue
        if not inode.is_dir:
            raise NotADirectory(f"{path}: {part!r} is below a non-directory")
        found = image.lookup(inode.ino, part)
        if found is None:
            raise NotFound(f"{path}: no entry {part!r}")
        inode = found
    return inode
