"""Splitting files into chunks, deduplicating them, and storing the new ones in a blob.

A file of size S is cut into ceil(S / C) chunks of C bytes (the last one shorter). A chunk
is identified by (digest, size), digest = H(uncompressed bytes). A chunk already seen in
this build, or present in the chunk dictionary (the chunks of an existing image), is not
stored again: the file simply references the earlier chunk, possibly in another blob.
New chunks are compressed and appended to the one blob this build writes.

Blob indexes follow upstream: a blob enters the image's blob table the first time one of
its chunks is referenced (so a dictionary blob may come before the new blob, and unused
dictionary blobs are left out); the new blob exists only if some chunk had to be stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..algorithms import Compressor, Digester, digest
from ..blobinfo import BlobInfo
from ..errors import RafsError
from ..image import Image
from ..v5.layout import ChunkRecord
from .blob import BlobWriter
from .compression import compress
from .errors import BuildError
from .tree import Content

ChunkKey = tuple[bytes, int]  # (digest, uncompressed size)
Progress = Callable[[int], None]  # called with the number of bytes just chunked


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """How this build cuts and stores chunks."""

    chunk_size: int  # bytes; power of two, 4 KiB .. 16 MiB
    compressor: Compressor
    digester: Digester
    v6: bool  # v6 blobs: aligned uncompressed offsets, blob meta and ToC


@dataclass(frozen=True, slots=True)
class ChunkDict:
    """Chunks of an existing image (by key) and the blobs holding them (by that image's index)."""

    blobs: tuple[BlobInfo, ...]
    chunks: dict[ChunkKey, ChunkRecord]
    version: int
    chunk_size: int
    compressor: Compressor
    digester: Digester

    @classmethod
    def from_image(cls, image: Image) -> ChunkDict:
        """Collect every chunk the files of `image` reference (reads the bootstrap only)."""
        chunks: dict[ChunkKey, ChunkRecord] = {}
        stack = [image.root_ino]
        seen = set(stack)
        while stack:
            for _, name, inode in image.readdir(stack.pop()):
                if name in (b".", b"..") or inode.ino in seen:
                    continue
                seen.add(inode.ino)
                if inode.is_dir:
                    stack.append(inode.ino)
                elif inode.is_reg:
                    for ref in image.file_chunks(inode.ino, 0, inode.size):
                        if ref.blob_index is None or ref.digest is None:
                            continue
                        chunks.setdefault((ref.digest, ref.uncompressed_size), ChunkRecord(
                            ref.digest, ref.blob_index, 1 if ref.is_compressed else 0,
                            ref.compressed_size, ref.uncompressed_size, ref.compressed_offset,
                            ref.uncompressed_offset, 0, ref.chunk_index, 0))
        return cls(image.blobs, chunks, image.version, image.chunk_size, image.compressor,
                   image.digester)

    def check_compatible(self, params: ChunkParams) -> None:
        """Raise BuildError unless chunks of this dictionary can be referenced as they are."""
        problems = []
        if self.version != (6 if params.v6 else 5):
            problems.append(f"RAFS v{self.version}")
        if self.chunk_size != params.chunk_size:
            problems.append(f"chunk size {self.chunk_size}")
        if self.digester != params.digester:
            problems.append(f"digester {self.digester.name}")
        if not params.v6 and self.compressor != params.compressor:
            problems.append(f"compressor {self.compressor.name} (v5 has one per image)")
        if problems:
            raise BuildError("chunk dictionary does not match this build: " + ", ".join(problems))


class ChunkStore:
    """Turns file contents into chunk records; owns the blob being written."""

    def __init__(self, params: ChunkParams, blob_dir: Path, chunk_dict: ChunkDict | None = None,
                 progress: Progress | None = None) -> None:
        if chunk_dict is not None:
            chunk_dict.check_compatible(params)
        self.params = params
        self._blob_dir = blob_dir
        self._dict = chunk_dict
        self._progress = progress
        self._table: list[BlobInfo | BlobWriter] = []
        self._dict_index: dict[int, int] = {}
        self._seen: dict[ChunkKey, ChunkRecord] = {}
        self._writer: BlobWriter | None = None
        self._zero_digests: dict[int, bytes] = {}

    def chunk_file(self, content: Content, where: str) -> list[ChunkRecord]:
        """The chunk records of a file, in file order, with `file_offset` set."""
        size, step = content.size, self.params.chunk_size
        records = []
        buffer = bytearray(step)
        with content.open() as reader:
            for offset in range(0, size, step):
                length = min(step, size - offset)
                data = self._read(reader, buffer, length, where)
                record = self._chunk(data)
                records.append(dataclasses.replace(record, file_offset=offset))
                if self._progress is not None:
                    self._progress(length)
        return records

    @staticmethod
    def _read(reader: BinaryIO, buffer: bytearray, length: int,
              where: str) -> bytes:
        view = memoryview(buffer)[:length]
        done = 0
        try:
            while done < length:
                got = reader.readinto(view[done:])  # type: ignore[attr-defined]
                if not got:
                    raise BuildError(f"{where}: file ended {length - done} bytes early "
                                     f"(changed while building?)")
                done += got
        except (OSError, EOFError, ValueError) as exc:
            raise BuildError(f"{where}: read failed: {exc}") from exc
        except RafsError:
            raise
        except Exception as exc:  # tarfile/zstd stream errors surface as many types
            raise BuildError(f"{where}: read failed: {exc}") from exc
        return bytes(view)

    def _digest(self, data: bytes) -> bytes:
        # Sparse files and zero-filled images are common; skip hashing all-zero chunks.
        if data.count(0) == len(data):
            cached = self._zero_digests.get(len(data))
            if cached is None:
                cached = self._zero_digests[len(data)] = digest(self.params.digester, data)
            return cached
        return digest(self.params.digester, data)

    def _chunk(self, data: bytes) -> ChunkRecord:
        key = (self._digest(data), len(data))
        known = self._seen.get(key) or self._from_dict(key)
        if known is not None:
            return known
        writer = self._current_writer()
        stored, compressed = compress(self.params.compressor, data)
        record = writer.add(stored, compressed, len(data), key[0])
        self._seen[key] = record
        return record

    def _from_dict(self, key: ChunkKey) -> ChunkRecord | None:
        if self._dict is None or key not in self._dict.chunks:
            return None
        record = self._dict.chunks[key]
        index = self._dict_index.get(record.blob_index)
        if index is None:
            index = self._dict_index[record.blob_index] = len(self._table)
            info = self._dict.blobs[record.blob_index]
            self._table.append(dataclasses.replace(info, index=index))
        record = dataclasses.replace(record, blob_index=index)
        self._seen[key] = record
        return record

    def _current_writer(self) -> BlobWriter:
        if self._writer is None:
            p = self.params
            self._writer = BlobWriter(self._blob_dir, len(self._table), p.compressor,
                                      p.digester, p.chunk_size, v6=p.v6)
            self._table.append(self._writer)
        return self._writer

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()

    def finish(self) -> tuple[list[BlobInfo], BlobInfo | None]:
        """Finish the new blob; (the image's blob table in index order, the new blob)."""
        blobs, new = [], None
        for entry in self._table:
            if isinstance(entry, BlobWriter):
                entry = new = entry.finish()
            blobs.append(entry)
        return blobs, new
