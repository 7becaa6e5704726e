"""`rafs inspect`: human-readable views of an image (tree, one inode, its chunks, blobs)."""

from __future__ import annotations

import stat
from collections.abc import Iterator

from ..image import Image
from ..inode import Inode
from .walk import resolve, walk


def _kind(inode: Inode) -> str:
    return stat.filemode(inode.mode)


def tree_lines(image: Image) -> Iterator[str]:
    """One line per name: mode, uid:gid, size, path (and symlink target)."""
    for path, inode in walk(image):
        name = path.decode(errors="replace")
        line = f"{_kind(inode)} {inode.uid}:{inode.gid} {inode.size:>12} {name}"
        if inode.is_symlink:
            line += " -> " + image.readlink(inode.ino).decode(errors="replace")
        yield line


def stat_lines(image: Image, path: str) -> Iterator[str]:
    inode = resolve(image, path)
    yield f"path:  {path}"
    yield f"ino:   {inode.ino}   nlink: {inode.nlink}   mode: {_kind(inode)} ({inode.mode:o})"
    yield f"owner: {inode.uid}:{inode.gid}   size: {inode.size}   blocks: {inode.blocks}"
    yield f"mtime: {inode.mtime}.{inode.mtime_nsec:09d}   rdev: {inode.rdev:#x}"
    if inode.is_symlink:
        yield f"target: {image.readlink(inode.ino).decode(errors='replace')}"
    for name, value in sorted(image.xattrs(inode.ino).items()):
        yield f"xattr: {name.decode(errors='replace')}={value!r}"


def chunk_lines(image: Image, path: str) -> Iterator[str]:
    inode = resolve(image, path)
    yield "file_offset size blob ci_index compressed_offset compressed_size uoffset digest"
    for ref in image.file_chunks(inode.ino, 0, inode.size):
        if ref.blob_index is None:
            yield f"{ref.file_offset:>11} {ref.uncompressed_size:>7} hole"
            continue
        digest = ref.digest.hex() if ref.digest else "-"
        yield (f"{ref.file_offset:>11} {ref.uncompressed_size:>7} {ref.blob_index:>4} "
               f"{ref.chunk_index:>8} {ref.compressed_offset:>17} {ref.compressed_size:>15} "
               f"{ref.uncompressed_offset:>7} {digest}")


def blob_lines(image: Image) -> Iterator[str]:
    yield (f"RAFS v{image.version}, chunk size {image.chunk_size}, "
           f"{image.compressor.name.lower()}, {image.digester.name.lower()}, "
           f"{image.inode_count} inodes")
    for blob in image.blobs:
        yield (f"blob {blob.index}: {blob.blob_id} chunks={blob.chunk_count} "
               f"compressed={blob.compressed_size} uncompressed={blob.uncompressed_size} "
               f"compressor={blob.compressor.name.lower()} features={int(blob.features):#x}")
