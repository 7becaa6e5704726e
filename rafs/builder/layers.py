"""OCI image layers (tar, tar.gz, tar.zst) applied in order into one `FileNode` tree.

Layer semantics (OCI image spec, "Representing changes"): a layer is a tar stream applied
on top of the layers below it. `.wh.<name>` deletes `<name>` of the lower layers, and
`.wh..wh..opq` in a directory hides everything the lower layers put in it. Whiteouts of a
layer never affect entries of the same layer, so they are applied first, then the layer's
entries in archive order (a hard link may then refer to an earlier entry of the same layer
or to a lower layer's file). A directory entry over an existing directory only updates its
attributes; any other entry replaces what was there, subtree included.

Untrusted input: absolute names and `..` components are refused (UnsafeEntry), as are hard
links to paths that are not in the tree; a member whose data runs past the end of the
archive is refused before anything is read. Compressed layers are decompressed into an
anonymous scratch file so members can be read in any order; the layers stay open until the
`LayerSet` is closed, after the build has read every file.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO, Final

import zstandard

from .errors import BuildError, UnsafeEntry
from .tree import FileNode, check_name, check_node, keep_xattr, new_directory, split_ns

WHITEOUT_PREFIX: Final = b".wh."
OPAQUE_MARKER: Final = b".wh..wh..opq"
MAX_FILE_SIZE: Final = 1 << 40  # bytes; refuse members declaring more than 1 TiB
_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_TAR_ERRORS: Final = (tarfile.TarError, OSError, EOFError, zstandard.ZstdError,
                      gzip.BadGzipFile, UnicodeError, ValueError)


@dataclass(frozen=True, slots=True)
class TarContent:
    """A regular file stored in an open layer archive."""

    archive: tarfile.TarFile
    member: tarfile.TarInfo
    size: int

    def open(self) -> BinaryIO:
        reader = self.archive.extractfile(self.member)
        if reader is None:
            raise BuildError(f"layer member {self.member.name!r} has no data")
        return reader  # type: ignore[return-value]


def split_path(name: str, where: str) -> list[bytes]:
    """The components of a member name; [] is the root. Refuses escapes."""
    raw = os.fsencode(name)
    if raw.startswith(b"/"):
        raise UnsafeEntry(f"{where}: absolute path {raw[:200]!r}")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise UnsafeEntry(f"{where}: path {raw[:200]!r} leaves the image")
    for part in parts:
        check_name(part, where)
    return parts


def _open_archive(path: Path, scratch: Path | None, stack: contextlib.ExitStack) -> IO[bytes]:
    raw = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - owned by the stack
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
    elif magic == _ZSTD_MAGIC:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
    else:
        return raw
    spool = stack.enter_context(tempfile.TemporaryFile(dir=scratch))  # noqa: SIM115
    shutil.copyfileobj(stream, spool, 1 << 20)
    spool.seek(0)
    return spool


def _xattrs(member: tarfile.TarInfo) -> dict[bytes, bytes]:
    result: dict[bytes, bytes] = {}
    for key, value in sorted(member.pax_headers.items()):
        if key.startswith("SCHILY.xattr."):
            name, data = key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name, data = key[len("LIBARCHIVE.xattr."):], base64.b64decode(value + "==")
        else:
            continue
        raw = name.encode("utf-8", "surrogateescape")
        if keep_xattr(raw):
            result[raw] = data
    return result


class LayerSet:
    """Applies layers into one tree; keeps the archives open for the chunker.

    Use as a context manager: `with LayerSet(paths) as layers: build(layers.root)`.
    """

    def __init__(self, paths: list[Path], scratch: Path | None = None) -> None:
        self.root = new_directory()
        self._stack = contextlib.ExitStack()
        try:
            for index, path in enumerate(paths):
                self._apply(path, f"layer {index} ({path.name})", scratch)
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> LayerSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _apply(self, path: Path, where: str, scratch: Path | None) -> None:
        try:
            fileobj = _open_archive(path, scratch, self._stack)
            size = fileobj.seek(0, os.SEEK_END)
            fileobj.seek(0)
            archive = tarfile.open(fileobj=fileobj, mode="r:", encoding="utf-8",  # noqa: SIM115
                                   errors="surrogateescape")
            self._stack.callback(archive.close)
            members = archive.getmembers()
        except _TAR_ERRORS as exc:
            raise BuildError(f"{where}: not a readable tar layer: {exc}") from exc
        entries = []
        for member in members:
            parts = split_path(member.name, f"{where}, {member.name!r}")
            if parts and parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(parts)
            else:
                entries.append((parts, member))
        for parts, member in entries:
            self._add(parts, member, archive, size, f"{where}, {member.name!r}")

    def _lookup(self, parts: list[bytes]) -> FileNode | None:
        node: FileNode | None = self.root
        for part in parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(part)
        return node

    def _whiteout(self, parts: list[bytes]) -> None:
        parent = self._lookup(parts[:-1])
        if parent is None or parent.children is None:
            return  # nothing below to hide
        if parts[-1] == OPAQUE_MARKER:
            parent.children.clear()
        else:
            parent.children.pop(parts[-1][len(WHITEOUT_PREFIX):], None)

    def _parent(self, parts: list[bytes], where: str) -> FileNode:
        node = self.root
        for part in parts:
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = new_directory()
            elif not child.is_dir:
                raise BuildError(f"{where}: parent {part!r} is not a directory")
            node = child
        return node

    def _add(self, parts: list[bytes], member: tarfile.TarInfo, archive: tarfile.TarFile,
             archive_size: int, where: str) -> None:
        node = self._node(member, archive, archive_size, where)
        check_node(node, where)
        if not parts:
            if not node.is_dir:
                raise BuildError(f"{where}: the root must be a directory")
            node.children = self.root.children
            self.root = node
            return
        parent = self._parent(parts[:-1], where)
        assert parent.children is not None
        old = parent.children.get(parts[-1])
        if old is not None and old.is_dir and node.is_dir:
            node.children = old.children
        parent.children[parts[-1]] = node

    def _node(self, member: tarfile.TarInfo, archive: tarfile.TarFile, archive_size: int,
              where: str) -> FileNode:
        if member.islnk():
            return self._hardlink(member, where)
        mtime, mtime_nsec = split_ns(int(member.mtime * 1_000_000_000))
        node = FileNode(mode=member.mode & 0o7777, uid=member.uid, gid=member.gid,
                        mtime=mtime, mtime_nsec=mtime_nsec, xattrs=_xattrs(member))
        if member.isreg():
            self._check_data(member, archive_size, where)
            node.mode |= stat.S_IFREG
            node.content = TarContent(archive, member, member.size)
        elif member.isdir():
            node.mode |= stat.S_IFDIR
            node.children = {}
        elif member.issym():
            node.mode |= stat.S_IFLNK
            node.target = os.fsencode(member.linkname)
        elif member.ischr() or member.isblk():
            node.mode |= stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            node.rdev = os.makedev(member.devmajor, member.devminor) & 0xFFFF_FFFF
        elif member.isfifo():
            node.mode |= stat.S_IFIFO
        else:
            raise BuildError(f"{where}: unsupported tar entry type {member.type!r}")
        return node

    @staticmethod
    def _check_data(member: tarfile.TarInfo, archive_size: int, where: str) -> None:
        if not 0 <= member.size <= MAX_FILE_SIZE:
            raise BuildError(f"{where}: declared size {member.size} out of range")
        stored = member.size if not member.issparse() else 0
        if member.offset_data + stored > archive_size:
            raise BuildError(f"{where}: declares {member.size} bytes, the archive ends "
                             f"{archive_size - member.offset_data} bytes after its header")

    def _hardlink(self, member: tarfile.TarInfo, where: str) -> FileNode:
        target = self._lookup(split_path(member.linkname, f"{where} link target"))
        if target is None or target.is_dir:
            raise UnsafeEntry(f"{where}: hard link to {member.linkname!r}, which is not a "
                              f"file of the image")
        # Only regular files share an inode; other types get their own copy (as upstream).
        return target if target.is_reg else replace(target, xattrs=dict(target.xattrs))
