"""The source tree the builder lays out: a directory on disk or merged OCI layers.

A `FileNode` is one inode of the source: attributes, and by type the content of a regular
file, the target of a symlink, or the children of a directory (by raw name bytes). Hard
links are the same `FileNode` object under several names; only regular files are ever
shared (upstream never merges symlinks or devices either). The tree is built completely
before layout, so layout can sort names and number inodes deterministically.

Only this module and `layers` touch the source; contents are opened lazily, one file at a
time, while the chunker reads them.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from .errors import BuildError

MAX_NAME: Final = 255  # bytes; EROFS and v5 name limit
MAX_SYMLINK: Final = 4095  # bytes; PATH_MAX minus the NUL, readers refuse more than 4096
MAX_XATTR_VALUE: Final = 65535  # bytes; v6 stores the value size in a u16
# Names the formats can encode (rafs-format §3.9, §4.8); others are dropped.
XATTR_PREFIXES: Final = (b"user.", b"security.", b"trusted.", b"system.posix_acl_access",
                         b"system.posix_acl_default")


class Content(Protocol):
    """Where a regular file's bytes come from; `open` is called once, by the chunker."""

    @property
    def size(self) -> int:
        ...

    def open(self) -> BinaryIO:
        ...


@dataclass(frozen=True, slots=True)
class PathContent:
    """A regular file of a source directory."""

    path: Path
    size: int

    def open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")
        except OSError as exc:
            raise BuildError(f"cannot open {self.path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class BytesContent:
    """Content held in memory (tests, small generated files)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)


@dataclass(eq=False, slots=True)
class FileNode:
    """One source inode; identity (not equality) tells hard links apart."""

    mode: int  # full st_mode
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds
    mtime_nsec: int = 0
    rdev: int = 0  # kernel 32-bit encoding (major/minor as the EROFS i_u field holds it)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    target: bytes | None = None  # symlink target
    content: Content | None = None  # regular file data
    children: dict[bytes, FileNode] | None = None  # directory entries, no "." or ".."

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def size(self) -> int:
        """File size, symlink target length; 0 for others (directories are sized by layout)."""
        if self.content is not None:
            return self.content.size
        return len(self.target) if self.target is not None else 0

    def sorted_children(self) -> list[tuple[bytes, FileNode]]:
        """Entries sorted by raw name bytes, as both formats store them."""
        return sorted((self.children or {}).items())


def new_directory(mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 0) -> FileNode:
    return FileNode(mode=stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid, mtime=mtime,
                    children={})


def check_name(name: bytes, where: str) -> None:
    """Raise BuildError for names no directory entry can carry."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise BuildError(f"{where}: invalid file name {name!r}")
    if len(name) > MAX_NAME:
        raise BuildError(f"{where}: name longer than {MAX_NAME} bytes")


def check_node(node: FileNode, where: str) -> None:
    """Raise BuildError for attributes the formats cannot hold."""
    if node.target is not None and len(node.target) > MAX_SYMLINK:
        raise BuildError(f"{where}: symlink target of {len(node.target)} bytes")
    if not (0 <= node.uid < 1 << 32 and 0 <= node.gid < 1 << 32):
        raise BuildError(f"{where}: uid/gid out of range")
    for name, value in node.xattrs.items():
        if len(value) > MAX_XATTR_VALUE or len(name) > MAX_NAME:
            raise BuildError(f"{where}: xattr {name[:40]!r} too large")


def keep_xattr(name: bytes) -> bool:
    return name.startswith(XATTR_PREFIXES)


def split_ns(ns: int) -> tuple[int, int]:
    """(seconds, nanoseconds) of a timestamp; negative times clamp to 0 (on-disk unsigned)."""
    return (ns // 1_000_000_000, ns % 1_000_000_000) if ns >= 0 else (0, 0)


def walk(root: FileNode) -> Iterator[tuple[bytes, FileNode]]:
    """Every (path, node) in depth-first pre-order, names sorted; iterative (deep trees)."""
    stack: list[tuple[bytes, FileNode]] = [(b"/", root)]
    while stack:
        path, node = stack.pop()
        yield path, node
        prefix = path if path.endswith(b"/") else path + b"/"
        stack.extend((prefix + name, child) for name, child in reversed(node.sorted_children()))


# -- directories ---------------------------------------------------------------------------


def _read_xattrs(path: Path) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # no xattr support on this file system or file type
        return {}
    result: dict[bytes, bytes] = {}
    for name in names:
        raw = os.fsencode(name)
        if keep_xattr(raw):
            try:
                result[raw] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue  # raced away, or not readable by us: nothing to store
    return result


def _node_from_stat(path: Path, st: os.stat_result) -> FileNode:
    mtime, mtime_nsec = split_ns(st.st_mtime_ns)
    node = FileNode(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime=mtime,
                    mtime_nsec=mtime_nsec, xattrs=_read_xattrs(path))
    if stat.S_ISREG(st.st_mode):
        node.content = PathContent(path, st.st_size)
    elif stat.S_ISLNK(st.st_mode):
        node.target = os.fsencode(os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        node.children = {}
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        node.rdev = st.st_rdev & 0xFFFF_FFFF
    return node


def from_directory(root: Path) -> FileNode:
    """The tree under `root` (not following symlinks); hard links become shared nodes.

    Raises:
        BuildError: `root` is not a directory, or an entry cannot be read.
    """
    try:
        top = _node_from_stat(root, root.lstat())
    except OSError as exc:
        raise BuildError(f"cannot read {root}: {exc}") from exc
    if not top.is_dir:
        raise BuildError(f"{root} is not a directory")
    links: dict[tuple[int, int], FileNode] = {}
    pending = [(root, top)]
    while pending:
        path, node = pending.pop()
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise BuildError(f"cannot list {path}: {exc}") from exc
        for name in names:
            child_path = path / name
            try:
                st = child_path.lstat()
                child = links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if child is None or not child.is_reg:
                    child = _node_from_stat(child_path, st)
            except OSError as exc:
                raise BuildError(f"cannot read {child_path}: {exc}") from exc
            raw = os.fsencode(name)
            check_name(raw, str(child_path))
            check_node(child, str(child_path))
            if child.is_reg and st.st_nlink > 1:
                links[(st.st_dev, st.st_ino)] = child
            assert node.children is not None
            node.children[raw] = child
            if child.is_dir:
                pending.append((child_path, child))
    return top
