"""Turning a chunk's stored bytes into its verified content (pure; rafs-format §2.1, §7).

`decode_chunk` is the one place chunk data is decompressed and checked: the output is bounded
by the chunk's recorded uncompressed size before any decompressor runs (a lying stream can
neither allocate more nor come out short), then its digest is compared with the record.
Decompressor errors are translated into CorruptChunk here, where they enter.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

import lz4.block  # type: ignore[import-untyped]
import zstandard

from .algorithms import Compressor, Digester, digest
from .errors import CorruptChunk, DigestMismatch, FormatError, Unsupported
from .inode import ChunkRef
from .records import Buffer

MAX_CHUNK_SIZE: Final = 16 << 20  # bytes; no RAFS chunk is larger (§3.2)

Decompressor = Callable[[bytes, int], bytes]


def _lz4_block(data: bytes, size: int) -> bytes:
    # A raw LZ4 block carries no length: the caller's size bounds the output (§2.1).
    result: bytes = lz4.block.decompress(data, uncompressed_size=size)
    return result


def _zstd(data: bytes, size: int) -> bytes:
    # A frame header may announce its content size and zstandard would trust it; check it
    # first, then bound frames that do not announce one with max_output_size.
    announced = zstandard.frame_content_size(data)
    if announced > size:
        raise CorruptChunk(f"zstd frame announces {announced} bytes")
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)


def _gzip(data: bytes, size: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    result = inflater.decompress(data, size + 1)  # one extra byte detects overlong streams
    if len(result) > size or not inflater.eof:
        raise CorruptChunk("gzip member longer than the chunk or truncated")
    return result


_DECOMPRESSORS: Final[dict[Compressor, Decompressor]] = {
    Compressor.LZ4_BLOCK: _lz4_block,
    Compressor.ZSTD: _zstd,
    Compressor.GZIP: _gzip,
}


def decompress(compressor: Compressor, data: Buffer, size: int, where: str = "chunk",
               limit: int = MAX_CHUNK_SIZE) -> bytes:
    """Decompress `data` to exactly `size` (at most `limit`) bytes, else CorruptChunk."""
    if not 0 < size <= limit:
        raise FormatError(f"{where}: uncompressed size {size} out of range")
    raw = bytes(data)
    if compressor is Compressor.NONE:
        result = raw
    else:
        try:
            result = _DECOMPRESSORS[compressor](raw, size)
        except CorruptChunk as exc:
            raise CorruptChunk(f"{where}: {exc}") from None
        except (zstandard.ZstdError, lz4.block.LZ4BlockError, zlib.error, ValueError) as exc:
            raise CorruptChunk(f"{where}: {compressor.name} stream is corrupt: {exc}") from exc
    if len(result) != size:
        raise CorruptChunk(f"{where}: decoded {len(result)} bytes, expected {size}")
    return result


def decode_chunk(ref: ChunkRef, raw: Buffer, compressor: Compressor, digester: Digester,
                 verify: bool = True) -> bytes:
    """The uncompressed content of chunk `ref` from its stored bytes `raw`.

    Args:
        ref: the chunk, as returned by `Image.file_chunks` (not a hole).
        raw: exactly `ref.compressed_size` bytes read at `ref.compressed_offset`.
        compressor, digester: the blob's algorithms (`Image.blobs[ref.blob_index]`).
        verify: compare the digest with `ref.digest` (skipped if the image records none).

    Raises:
        CorruptChunk: wrong length or undecodable stream; DigestMismatch: wrong content.
    """
    where = f"chunk {ref.chunk_index} of blob {ref.blob_index} at offset {ref.compressed_offset}"
    if ref.is_hole:
        raise Unsupported(f"{where}: a hole has no stored bytes")
    if len(memoryview(raw)) != ref.compressed_size:
        raise CorruptChunk(f"{where}: got {len(memoryview(raw))} bytes, "
                           f"expected {ref.compressed_size}")
    if not ref.is_compressed and ref.compressed_size != ref.uncompressed_size:
        raise CorruptChunk(f"{where}: raw chunk with sizes {ref.compressed_size} != "
                           f"{ref.uncompressed_size}")
    algorithm = compressor if ref.is_compressed else Compressor.NONE
    data = decompress(algorithm, raw, ref.uncompressed_size, where)
    if verify:
        verify_chunk(ref, data, digester)
    return data


def verify_chunk(ref: ChunkRef, data: bytes | memoryview, digester: Digester) -> None:
    """Raise DigestMismatch unless `data` is the uncompressed content `ref` records.

    Chunks whose digest the image does not record pass (there is nothing to check against).
    """
    where = f"chunk {ref.chunk_index} of blob {ref.blob_index} at offset {ref.compressed_offset}"
    if len(memoryview(data)) != ref.uncompressed_size:
        raise CorruptChunk(f"{where}: {len(memoryview(data))} bytes, "
                           f"expected {ref.uncompressed_size}")
    if ref.digest is not None:
        actual = digest(digester, data)
        if actual != ref.digest:
            raise DigestMismatch(f"{where}: {digester.name} digest {actual.hex()} != "
                                 f"recorded {ref.digest.hex()}")
