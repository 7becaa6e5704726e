"""Unpacking an image into a directory or a tar stream, through the reader's public API.

Safety: the image is untrusted. Into a directory, every entry is created relative to its
parent directory's file descriptor with O_NOFOLLOW / O_EXCL semantics, and directories are
reopened component by component with O_NOFOLLOW, so neither a symlink in the image nor a
crafted name can make us write outside the target (which must be empty or absent).
Names are checked ("/", NUL, ".", ".." refused). File contents are verified against their
chunk digests while being copied.

Hard links (equal inode numbers) are recreated as links; ownership is restored only when
running as root; directory times are set after their contents.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import FormatError, RafsError
from ..inode import Inode
from .blobs import BlobFiles
from .walk import walk


class UnpackError(RafsError):
    """The target cannot be written (exists, not empty, I/O error)."""


def _check(path: bytes) -> list[bytes]:
    parts = path.strip(b"/").split(b"/") if path != b"/" else []
    if any(p in (b"", b".", b"..") or b"\0" in p for p in parts):
        raise FormatError(f"image entry {path[:200]!r}: unsafe name")
    return parts


class _DirWriter:
    """Creates entries below one root fd, never following symlinks."""

    def __init__(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        if any(target.iterdir()):
            raise UnpackError(f"{target} is not empty")
        self.root = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        self.as_root = os.geteuid() == 0
        self.first_link: dict[int, list[bytes]] = {}

    def open_dir(self, parts: list[bytes]) -> int:
        fd = os.dup(self.root)
        try:
            for part in parts:
                new = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = new
        except BaseException:
            os.close(fd)
            raise
        return fd

    def attributes(self, name: bytes, inode: Inode, dir_fd: int, xattrs: dict[bytes, bytes]
                   ) -> None:
        link = inode.is_symlink
        if self.as_root:
            os.chown(name, inode.uid, inode.gid, dir_fd=dir_fd, follow_symlinks=False)
        if not link:
            os.chmod(name, stat.S_IMODE(inode.mode), dir_fd=dir_fd)
            for key, value in xattrs.items():
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd) \
                    if inode.is_reg or inode.is_dir else -1
                if fd >= 0:
                    try:
                        os.setxattr(fd, key, value)
                    finally:
                        os.close(fd)
        os.utime(name, ns=(inode.mtime * 10**9 + inode.mtime_nsec,) * 2, dir_fd=dir_fd,
                 follow_symlinks=False)


def unpack_to_directory(blobs: BlobFiles, target: Path) -> int:
    """Write every entry of the image below `target`; returns the number of entries."""
    image = blobs.image
    writer = _DirWriter(target)
    dirs: list[tuple[list[bytes], Inode]] = []
    count = 0
    try:
        for path, inode in walk(image):
            parts = _check(path)
            count += 1
            if not parts:
                dirs.append((parts, inode))
                continue
            fd = writer.open_dir(parts[:-1])
            try:
                _create(writer, blobs, parts, inode, fd)
            finally:
                os.close(fd)
            if inode.is_dir:
                dirs.append((parts, inode))
        for parts, inode in reversed(dirs):  # children first: their writes touch mtimes
            fd = writer.open_dir(parts[:-1])
            try:
                writer.attributes(parts[-1] if parts else b".", inode, fd, image.xattrs(inode.ino))
            finally:
                os.close(fd)
    except OSError as exc:
        raise UnpackError(f"unpacking into {target}: {exc}") from exc
    finally:
        os.close(writer.root)
    return count


def _create(writer: _DirWriter, blobs: BlobFiles, parts: list[bytes], inode: Inode,
            fd: int) -> None:
    name = parts[-1]
    image = blobs.image
    if inode.is_reg and inode.nlink > 1 and inode.ino in writer.first_link:
        first = writer.first_link[inode.ino]
        src = writer.open_dir(first[:-1])
        try:
            os.link(first[-1], name, src_dir_fd=src, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(src)
        return
    if inode.is_dir:
        os.mkdir(name, 0o700, dir_fd=fd)
        return
    if inode.is_reg:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                      dir_fd=fd)
        with open(out, "wb") as file:
            for piece in blobs.file_pieces(inode.ino, inode.size):
                file.write(piece)
        writer.first_link[inode.ino] = parts
    elif inode.is_symlink:
        os.symlink(image.readlink(inode.ino), name, dir_fd=fd)
    else:
        os.mknod(name, inode.mode, os.makedev(*_split_dev(inode.rdev)), dir_fd=fd)
    writer.attributes(name, inode, fd, image.xattrs(inode.ino))


def _split_dev(rdev: int) -> tuple[int, int]:
    """(major, minor) of the kernel's 32-bit device encoding."""
    return (rdev >> 8) & 0xFFF, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


class _Pieces:
    """A read-only stream over a generator of byte pieces (for TarFile.addfile)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces, self._buffer = pieces, b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buffer += piece
        cut = len(self._buffer) if size < 0 else size
        data, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return data


def unpack_to_tar(blobs: BlobFiles, out: BinaryIO) -> int:
    """Write the image as a PAX tar stream to `out`; returns the number of entries."""
    image = blobs.image
    first: dict[int, str] = {}
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for path, inode in walk(image):
            parts = _check(path)
            name = os.fsdecode(b"/".join(parts)) or "."
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid = stat.S_IMODE(inode.mode), inode.uid, inode.gid
            info.mtime = inode.mtime
            info.pax_headers = {"SCHILY.xattr." + k.decode("utf-8", "surrogateescape"):
                                v.decode("utf-8", "surrogateescape")
                                for k, v in sorted(image.xattrs(inode.ino).items())}
            stream = None
            if inode.is_reg and inode.nlink > 1 and inode.ino in first:
                info.type, info.linkname = tarfile.LNKTYPE, first[inode.ino]
            elif inode.is_reg:
                info.size = inode.size
                stream = _Pieces(blobs.file_pieces(inode.ino, inode.size))
                first[inode.ino] = name
            elif inode.is_dir:
                info.type = tarfile.DIRTYPE
            elif inode.is_symlink:
                info.type = tarfile.SYMTYPE
                info.linkname = os.fsdecode(image.readlink(inode.ino))
            elif stat.S_ISCHR(inode.mode) or stat.S_ISBLK(inode.mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(inode.mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = _split_dev(inode.rdev)
            elif stat.S_ISFIFO(inode.mode):
                info.type = tarfile.FIFOTYPE
            else:
                continue  # sockets have no tar representation
            archive.addfile(info, stream)
            count += 1
    return count
