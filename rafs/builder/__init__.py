"""rafs.builder: build RAFS v5/v6 images (bootstrap + data blob) from a directory or OCI layers.

    from rafs.builder import BuildOptions, build_from_directory, build_from_layers
    result = build_from_directory(Path("rootfs"), Path("out/bootstrap"), Path("out/blobs"),
                                  BuildOptions(version=6, compressor=Compressor.NONE))
    result.bootstrap, result.new_blob.blob_id

Module map: `tree` (directory -> FileNode tree), `layers` (OCI tars + whiteouts -> tree),
`numbering` (inode numbers), `chunker` (split, dedupe, chunk dictionary), `compression`,
`blob` (blob file: data, blob meta, ToC, id), `v6place` + `v6writer` and `v5writer`
(bootstraps), `build` (the pipeline). Errors are `BuildError`/`UnsafeEntry` (RafsError).
"""

from __future__ import annotations

from .build import (
    DEFAULT_CHUNK_SIZE,
    BuildOptions,
    BuildResult,
    build_from_directory,
    build_from_layers,
    build_image,
)
from .chunker import ChunkDict
from .errors import BuildError, UnsafeEntry
from .layers import LayerSet
from .tree import BytesContent, FileNode, from_directory, new_directory

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "BytesContent",
    "ChunkDict",
    "FileNode",
    "LayerSet",
    "UnsafeEntry",
    "build_from_directory",
    "build_from_layers",
    "build_image",
    "from_directory",
    "new_directory",
]
