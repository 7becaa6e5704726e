"""Shared helpers for the rafs tests: the upstream-built fixtures and a reference file reader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import rafs
from rafs.plan import assemble, plan_reads
from tests.support.fixtures import FIXTURES, V5_DIR, V6_DIR

__all__ = ["FIXTURES", "V5_DIR", "V6_DIR"]


class Blobs:
    """Blob files of a fixture image, by blob index."""

    def __init__(self, image: rafs.Image, directory: Path) -> None:
        self.data = {b.index: (directory / "blobs" / b.blob_id).read_bytes() for b in image.blobs}
        self.image = image

    def read(self, ino: int, offset: int = 0, size: int | None = None) -> bytes:
        """File bytes through the public API: file_chunks -> plan_reads -> decode_chunk."""
        if size is None:
            size = self.image.inode(ino).size - offset
        chunks = self.image.file_chunks(ino, offset, size)
        decoded: dict[tuple[int, int], bytes] = {}
        for read in plan_reads(chunks):
            blob = self.image.blobs[read.blob_index]
            fetched = self.data[read.blob_index][read.offset:read.end]
            for chunk in read.chunks:
                raw = read.chunk_bytes(fetched, chunk)
                decoded[(read.blob_index, chunk.compressed_offset)] = rafs.decode_chunk(
                    chunk, raw, blob.compressor, blob.digester)
        return assemble(chunks, lambda c: decoded[(c.blob_index or 0, c.compressed_offset)],
                        offset, size)


def walk(image: rafs.Image, ino: int | None = None, prefix: bytes = b"",
         ) -> Iterator[tuple[bytes, rafs.Inode]]:
    """(path, inode) of every entry below `ino`, depth first, in readdir order."""
    ino = image.root_ino if ino is None else ino
    for _, name, child in image.readdir(ino):
        if name in (b".", b".."):
            continue
        path = prefix + b"/" + name
        yield path, child
        if child.is_dir:
            yield from walk(image, child.ino, path)


@pytest.fixture(scope="session")
def v5_bytes() -> bytes:
    return (V5_DIR / "bootstrap").read_bytes()


@pytest.fixture(scope="session")
def v6_bytes() -> bytes:
    return (V6_DIR / "bootstrap").read_bytes()


@pytest.fixture(scope="session")
def v5_image() -> rafs.Image:
    return rafs.open_image(V5_DIR / "bootstrap")


@pytest.fixture(scope="session")
def v6_image() -> rafs.Image:
    return rafs.open_image(V6_DIR / "bootstrap")


@pytest.fixture(scope="session")
def v5_blobs(v5_image: rafs.Image) -> Blobs:
    return Blobs(v5_image, V5_DIR)


@pytest.fixture(scope="session")
def v6_blobs(v6_image: rafs.Image) -> Blobs:
    return Blobs(v6_image, V6_DIR)
