"""Chunk compression as the upstream builder does it (rafs-format §2.1).

Each chunk is compressed on its own; when the result is not strictly smaller the raw bytes
are stored and the chunk is marked uncompressed, so blobs of any compressor may hold raw
chunks. lz4_block is a bare LZ4 block (no size prefix); zstd is one frame at level 3.
"""

from __future__ import annotations

from typing import Final

import lz4.block  # type: ignore[import-untyped]
import zstandard

from ..algorithms import Compressor
from .errors import BuildError

ZSTD_LEVEL: Final = 3  # the zstd library default, as upstream uses
SUPPORTED: Final = (Compressor.NONE, Compressor.LZ4_BLOCK, Compressor.ZSTD)


def compress(compressor: Compressor, data: bytes) -> tuple[bytes, bool]:
    """(stored bytes, compressed?) for `data`."""
    if compressor is Compressor.NONE or not data:
        return data, False
    if compressor is Compressor.LZ4_BLOCK:
        packed: bytes = lz4.block.compress(data, store_size=False)
    elif compressor is Compressor.ZSTD:
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    else:
        raise BuildError(f"compressor {compressor.name} is not supported by the builder")
    return (packed, True) if len(packed) < len(data) else (data, False)
