"""rafs: a pure reader of Nydus RAFS v5/v6 images (bootstraps and data blobs).

    image = rafs.open_image(path)            # or rafs.Image.from_bytes(buf)
    inode = image.lookup(image.root_ino, b"etc")
    for next_index, name, child in image.readdir(inode.ino): ...
    chunks = image.file_chunks(ino, offset, size)          # holes are explicit
    for read in rafs.plan.plan_reads(chunks): ...          # fetch read.offset/read.size
    data = rafs.chunk.decode_chunk(ref, raw, blob.compressor, blob.digester)

Everything raises `RafsError` subclasses (see rafs.errors), never another exception.
"""

from __future__ import annotations

from . import chunk, plan
from .algorithms import Compressor, Digester
from .blobinfo import BlobFeatures, BlobInfo, BlobMetaLocation
from .blobmeta import BlobMeta, check_blob_id, compute_blob_id, read_section, read_toc
from .chunk import decode_chunk
from .errors import (
    CorruptChunk,
    DigestMismatch,
    FormatError,
    InvalidArgument,
    NotADirectory,
    NotFound,
    RafsError,
    Unsupported,
)
from .image import Image, open_image
from .inode import ChunkRef, Ino, Inode
from .plan import BlobRead, plan_reads

__all__ = [
    "BlobFeatures",
    "BlobInfo",
    "BlobMeta",
    "BlobMetaLocation",
    "BlobRead",
    "ChunkRef",
    "Compressor",
    "CorruptChunk",
    "DigestMismatch",
    "Digester",
    "FormatError",
    "Image",
    "Ino",
    "Inode",
    "InvalidArgument",
    "NotADirectory",
    "NotFound",
    "RafsError",
    "Unsupported",
    "check_blob_id",
    "chunk",
    "compute_blob_id",
    "decode_chunk",
    "open_image",
    "plan",
    "plan_reads",
    "read_section",
    "read_toc",
]
