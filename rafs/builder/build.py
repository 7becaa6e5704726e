"""Building a RAFS image: source tree -> numbered entries -> chunks in a blob -> bootstrap.

Steps, each in its own module: number every name (`numbering`), read regular files in
numbering order and cut them into deduplicated chunks stored in one new blob (`chunker`,
`blob`), then serialise the bootstrap (`v6writer` or `v5writer`). The blob is finished
(ToC written, renamed to its id) before the bootstrap, which records the id. Nothing
depends on time, randomness or directory listing order, so the same source gives
byte-identical output.

The bootstrap is written to a temporary name and renamed, so a failed build never leaves a
bootstrap that names a missing blob; a partially written blob is deleted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..algorithms import Compressor, Digester
from ..blobinfo import BlobInfo
from ..errors import RafsError
from ..image import open_image
from ..v5.layout import is_power_of_two_chunk
from .chunker import ChunkDict, ChunkParams, ChunkStore
from .compression import SUPPORTED
from .errors import BuildError
from .layers import LayerSet
from .numbering import Numbering, number_tree
from .tree import FileNode, from_directory
from .v5writer import V5Writer
from .v6writer import V6Writer

DEFAULT_CHUNK_SIZE: Final = 1 << 20  # bytes, as upstream
Progress = Callable[[int, int], None]  # (bytes chunked so far, bytes to chunk in total)


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """What kind of image to build."""

    version: int = 6  # RAFS 5 or 6
    chunk_size: int = DEFAULT_CHUNK_SIZE  # bytes; power of two, 4 KiB .. 16 MiB
    compressor: Compressor = Compressor.ZSTD  # upstream's default
    digester: Digester = Digester.BLAKE3
    extended_inodes: bool = False  # v6: always 64-byte inodes (keeps every mtime)
    chunk_dict: Path | None = None  # bootstrap whose chunks may be referenced, not stored

    def validate(self) -> None:
        if self.version not in (5, 6):
            raise BuildError(f"RAFS version {self.version}: only 5 and 6 exist")
        if not is_power_of_two_chunk(self.chunk_size):
            raise BuildError(f"chunk size {self.chunk_size}: need a power of two, 4 KiB..16 MiB")
        if self.compressor not in SUPPORTED:
            raise BuildError(f"compressor {self.compressor.name} is not supported")


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What a build produced."""

    bootstrap: Path  # the bootstrap file
    blobs: list[BlobInfo]  # the image's blob table (new blob and referenced dict blobs)
    new_blob: BlobInfo | None  # the blob this build wrote, if any chunk had to be stored
    entries: int  # names in the tree (root included)
    bytes_read: int  # bytes of regular file content chunked


def _load_dict(path: Path) -> ChunkDict:
    try:
        return ChunkDict.from_image(open_image(path))
    except OSError as exc:
        raise BuildError(f"cannot read chunk dictionary {path}: {exc}") from exc


def _chunk_files(numbering: Numbering, store: ChunkStore) -> int:
    total = 0
    for entry in numbering.entries:
        node = entry.node
        if not node.is_reg:
            continue
        if entry.is_first_link:
            assert node.content is not None
            entry.chunks = store.chunk_file(node.content, entry.name.decode(errors="replace"))
            total += node.size
        else:
            entry.chunks = numbering.entries[entry.ino - 1].chunks
    return total


def build_image(root: FileNode, bootstrap: Path, blob_dir: Path,
                options: BuildOptions = BuildOptions(),
                progress: Progress | None = None) -> BuildResult:
    """Build an image of the tree `root` into `bootstrap` and a blob in `blob_dir`.

    Raises:
        BuildError (a RafsError): bad options, unreadable source, limits exceeded.
    """
    options.validate()
    numbering = number_tree(root)
    params = ChunkParams(options.chunk_size, options.compressor, options.digester,
                         v6=options.version == 6)
    chunk_dict = _load_dict(options.chunk_dict) if options.chunk_dict else None
    blob_dir.mkdir(parents=True, exist_ok=True)
    todo = sum(e.node.size for e in numbering.entries if e.node.is_reg and e.is_first_link)
    done = [0]

    def advance(size: int) -> None:
        done[0] += size
        if progress is not None:
            progress(done[0], todo)

    store = ChunkStore(params, blob_dir, chunk_dict, advance)
    try:
        total = _chunk_files(numbering, store)
        blobs, new = store.finish()
    except BaseException:
        store.abort()
        raise
    data = _serialise(numbering, blobs, options)
    _write_atomically(bootstrap, data)
    return BuildResult(bootstrap, blobs, new, len(numbering.entries), total)


def _serialise(numbering: Numbering, blobs: list[BlobInfo], options: BuildOptions) -> bytes:
    if options.version == 6:
        return V6Writer(numbering, blobs, options.chunk_size, options.compressor,
                        options.digester, options.extended_inodes).write()
    return V5Writer(numbering, blobs, options.chunk_size, options.compressor,
                    options.digester).write()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"cannot write bootstrap {path}: {exc}") from exc


def build_from_directory(source: Path, bootstrap: Path, blob_dir: Path,
                         options: BuildOptions = BuildOptions(),
                         progress: Progress | None = None) -> BuildResult:
    """Build an image of the directory `source` (symlinks are stored, never followed)."""
    return build_image(from_directory(source), bootstrap, blob_dir, options, progress)


def build_from_layers(layers: list[Path], bootstrap: Path, blob_dir: Path,
                      options: BuildOptions = BuildOptions(),
                      progress: Progress | None = None) -> BuildResult:
    """Build one image of OCI layer tars applied in order (whiteouts honoured)."""
    if not layers:
        raise BuildError("no layers given")
    try:
        with LayerSet(layers, scratch=blob_dir if blob_dir.is_dir() else None) as merged:
            return build_image(merged.root, bootstrap, blob_dir, options, progress)
    except RafsError:
        raise
    except OSError as exc:
        raise BuildError(f"cannot read layers: {exc}") from exc
