"""Local blob files for the command line: open by id, read a file's bytes through the reader.

Blobs live in one directory, each named by its blob id (what the builder writes and what
`nydus-image create --blob-dir` writes). Files are mapped read-only; every byte of file
content goes through `rafs.chunk.decode_chunk`, which checks the chunk digest.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ..chunk import decode_chunk
from ..errors import NotFound
from ..image import Image
from ..records import Buffer


class BlobFiles:
    """The image's blobs, mapped from `directory` on first use; a context manager."""

    def __init__(self, image: Image, directory: Path) -> None:
        self.image = image
        self.directory = directory
        self._maps: dict[int, Buffer] = {}

    def __enter__(self) -> BlobFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for buf in self._maps.values():
            if isinstance(buf, mmap.mmap):
                buf.close()
        self._maps.clear()

    def path(self, index: int) -> Path:
        return self.directory / self.image.blobs[index].blob_id

    def blob(self, index: int) -> Buffer:
        """The whole blob file `index` (NotFound if it is missing)."""
        if index not in self._maps:
            path = self.path(index)
            try:
                with open(path, "rb") as file:
                    self._maps[index] = (mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
                                         if path.stat().st_size else b"")
            except OSError as exc:
                raise NotFound(f"blob {index} ({path}): {exc}") from exc
        return self._maps[index]

    def file_pieces(self, ino: int, size: int, verify: bool = True) -> Iterator[bytes]:
        """The content of regular file `ino`, chunk by chunk (holes as zeros)."""
        for ref in self.image.file_chunks(ino, 0, size):
            if ref.blob_index is None:
                yield bytes(ref.uncompressed_size)
                continue
            info = self.image.blobs[ref.blob_index]
            info.check_data_supported()
            raw = memoryview(self.blob(ref.blob_index))[
                ref.compressed_offset:ref.compressed_offset + ref.compressed_size]
            yield decode_chunk(ref, raw, info.compressor, info.digester, verify)

    def read_file(self, ino: int, size: int) -> bytes:
        return b"".join(self.file_pieces(ino, size))
