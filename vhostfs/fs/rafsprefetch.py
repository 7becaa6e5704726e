"""What a RAFS mount prefetches: the bootstrap's prefetch table, a file list, or everything.

nydusd-interface §4.2 and §4.6 give the rules; this module turns them into inodes (pure over
the Image, no I/O), and `RafsFilesystem.prefetch` turns the inodes into chunks and hands
them to the blob cache's Prefetcher, which paces the backend requests:

1. The user's list (`prefetch_files`, absolute paths inside the image), or, if there is no
   list, the bootstrap's prefetch table. A directory stands for everything below it. Paths
   the image does not have are skipped with a warning (as nydusd does), relative paths are
   refused when the mount is set up.
2. Then the whole image (every chunk any file references) when the list is exactly ["/"], or
   when `prefetch_all` is set and neither a list nor a table restricts the prefetch.

Hard links are visited once; a directory cycle cannot make the walk loop (visited set).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from rafs import Image, Inode, RafsError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrefetchPlan:
    """The prefetch part of a mount's configuration (rafs.prefetch / fs_prefetch)."""

    enable: bool = False
    files: tuple[str, ...] = ()  # absolute paths inside the image
    prefetch_all: bool = False  # whole image when nothing else restricts the prefetch

    def __post_init__(self) -> None:
        for path in self.files:
            if not path.startswith("/"):
                raise ValueError(f"prefetch_files: {path!r} is not an absolute path "
                                 "inside the image")


def lookup_path(image: Image, path: str) -> Inode | None:
    """The inode at absolute `path` in the image (no symlinks followed), or None."""
    inode = image.inode(image.root_ino)
    for part in path.encode().split(b"/"):
        if not part or part == b".":
            continue
        if not inode.is_dir:
            return None
        found = image.lookup(inode.ino, part)
        if found is None:
            return None
        inode = found
    return inode


def prefetch_roots(image: Image, plan: PrefetchPlan) -> tuple[list[Inode], bool]:
    """(inodes whose files to prefetch first, whether to prefetch the whole image after)."""
    if not plan.enable:
        return [], False
    if plan.files == ("/",):
        return [], True
    roots: list[Inode] = []
    if plan.files:
        for path in plan.files:
            inode = lookup_path(image, path)
            if inode is None:
                log.warning("prefetch: %s is not in the image; skipped", path)
            else:
                roots.append(inode)
        return roots, False
    for ino in image.prefetch_inos:
        try:
            roots.append(image.inode(ino))
        except RafsError as exc:
            log.warning("prefetch table: inode %d: %s; skipped", ino, exc)
    return roots, plan.prefetch_all and not image.prefetch_inos


def regular_files(image: Image, roots: Sequence[Inode]) -> Iterator[Inode]:
    """Every regular file at or below `roots`, each once, depth first in directory order."""
    seen: set[int] = set()
    stack = list(reversed(roots))
    while stack:
        inode = stack.pop()
        if inode.ino in seen:
            continue
        seen.add(inode.ino)
        if inode.is_reg:
            yield inode
        elif inode.is_dir:
            children = [child for _, name, child in image.readdir(inode.ino)
                        if name not in (b".", b"..")]
            stack.extend(reversed(children))


def unique_inos(files: Iterable[Inode]) -> list[int]:
    """Inode numbers of non-empty files, in order, without repeats."""
    seen: dict[int, None] = {}
    for inode in files:
        if inode.size:
            seen.setdefault(inode.ino, None)
    return list(seen)
