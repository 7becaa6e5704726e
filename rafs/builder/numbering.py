"""Inode numbering shared by the v5 and v6 writers (rafs-format §3.10, §4.13 step 1).

Upstream numbers names, not inodes: the root is 1; when a directory is processed all its
children (sorted by name bytes) get consecutive numbers, then its child directories are
processed in that order, depth first. So a directory's children occupy a contiguous range
(v5 binary-searches it) and every name, hard links included, has its own number. A hard
link's inode number (`ino`) is the number of the first name of that file; its link count
is the number of names. Directories have 2 + subdirectories links, other types 1.

The walk is iterative, so arbitrarily deep trees cannot exhaust Python's stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..v5.layout import ChunkRecord
from .tree import FileNode


@dataclass(eq=False, slots=True)
class Entry:
    """One name of the tree with the numbers the writers need."""

    index: int  # 1-based position in numbering order (v5 inode table slot)
    name: bytes  # b"/" for the root
    node: FileNode
    parent: Entry | None  # None for the root
    ino: int = 0  # index of the file's first name (shared by hard links)
    nlink: int = 1
    children: list[Entry] = field(default_factory=list)  # sorted by name
    chunks: list[ChunkRecord] = field(default_factory=list)  # regular files, in file order

    @property
    def is_first_link(self) -> bool:
        return self.ino == self.index


@dataclass(slots=True)
class Numbering:
    """Entries by index, and directories in the order they were processed."""

    entries: list[Entry]  # entries[i] has index i + 1
    dirs: list[Entry]  # root first, then depth-first over directories

    @property
    def root(self) -> Entry:
        return self.entries[0]

    def preorder(self) -> list[Entry]:
        """Depth-first pre-order over every entry (v5 record order)."""
        result: list[Entry] = []
        stack = [self.root]
        while stack:
            entry = stack.pop()
            result.append(entry)
            stack.extend(reversed(entry.children))
        return result

    def level_order(self) -> list[Entry]:
        """Breadth-first over every entry (upstream's v6 dump order)."""
        result = [self.root]
        for entry in result:
            result.extend(entry.children)
        return result


def number_tree(root: FileNode) -> Numbering:
    """Number every name of the tree under `root` (a directory)."""
    top = Entry(1, b"/", root, None, ino=1)
    entries, dirs = [top], []
    first: dict[int, Entry] = {}
    stack = [top]
    while stack:
        directory = stack.pop()
        dirs.append(directory)
        for name, node in directory.node.sorted_children():
            entry = Entry(len(entries) + 1, name, node, directory)
            entry.ino = first.setdefault(id(node), entry).index if node.is_reg else entry.index
            entries.append(entry)
            directory.children.append(entry)
        stack.extend(reversed([c for c in directory.children if c.node.is_dir]))
    _count_links(entries)
    return Numbering(entries, dirs)


def _count_links(entries: list[Entry]) -> None:
    names: dict[int, int] = {}
    for entry in entries:
        if entry.node.is_reg:
            names[entry.ino] = names.get(entry.ino, 0) + 1
    for entry in entries:
        if entry.node.is_dir:
            entry.nlink = 2 + sum(1 for c in entry.children if c.node.is_dir)
        elif entry.node.is_reg:
            entry.nlink = names[entry.ino]
