"""Writing one data blob: chunk data, then (v6) blob meta, digest array and ToC.

Byte layout (rafs-format §5.6, "--features blob-toc", which nydusify uses): chunk data,
tar(`image.blob`), chunk-info array, 4096-byte meta header, tar(`blob.meta`), chunk digest
array, tar(`blob.digest`), ToC entries, tar(`rafs.blob.toc`). A v5 blob is chunk data only.
The blob id is the sha256 of every byte written except the digest-array payload (§5.7);
the file is written under a temporary name and renamed to its id when finished.

Chunk placement: compressed offsets are back to back; uncompressed offsets are contiguous
(v5) or 4 KiB aligned (v6, feature ALIGNED), so that a v6 chunk index can address the chunk
as `uncompressed_offset / 4096` on the blob's EROFS device. For uncompressed v6 blobs we
go one step further than upstream and pad the data section so that every chunk's blob
offset equals its uncompressed offset: the first `uncompressed_size` bytes of the blob
then *are* the device image, and the kernel can mount the bootstrap with the blob files as
`-o device=` directly. Readers that follow offsets never see the padding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Final

from ..algorithms import Compressor, Digester
from ..blobinfo import BlobFeatures, BlobInfo, BlobMetaLocation
from ..blobmeta import (
    META_HEADER_SIZE,
    META_MAGIC,
    TOC_NAME,
    BlobMetaHeader,
    ChunkInfoV1,
    TarHeader,
    TocEntry,
)
from ..v5.layout import CHUNK_COMPRESSED, ChunkRecord
from .compression import compress
from .errors import BuildError

BLOCK: Final = 4096
MAX_CHUNKS: Final = 0xFF_FFFF  # ci indexes are 24 bits (§4.9.3)
V6_FEATURES: Final = (BlobFeatures.ALIGNED | BlobFeatures.INLINED_CHUNK_DIGEST
                      | BlobFeatures.HAS_TAR_HEADER | BlobFeatures.HAS_TOC
                      | BlobFeatures.CAP_TAR_TOC)
V5_FEATURES: Final = BlobFeatures.CAP_TAR_TOC
# ToC entry flags for a section's compression (§5.5)
_TOC_FLAGS: Final = {Compressor.NONE: 0x1, Compressor.ZSTD: 0x2, Compressor.LZ4_BLOCK: 0x4}


def tar_header(name: bytes, size: int) -> bytes:
    """The 512-byte GNU tar header that labels a blob section (§5.4)."""
    header = TarHeader(name=name, mode=b"", uid=b"", gid=b"", size=b"%011o\0" % size,
                       mtime=b"%011o\0" % 0, checksum=b" " * 8, typeflag=b"0", linkname=b"",
                       magic=b"ustar  \0", rest=b"")
    raw = header.pack()
    checksum = b"%07o\0" % sum(raw)
    return raw[:148] + checksum + raw[156:]


def encode_ci_v1(record: ChunkRecord) -> ChunkInfoV1:
    """The 16-byte chunk-info entry of a chunk (§5.2.2): sizes minus one, split 20/4 bits."""
    usize, csize = record.uncompressed_size - 1, record.compressed_size - 1
    uword = ((usize >> 20) & 0xF) << 8 | record.uncompressed_offset | (usize & 0xF_FFFF) << 44
    cword = record.compressed_offset | ((csize >> 20) & 0xF) << 40 | (csize & 0xF_FFFF) << 44
    return ChunkInfoV1(uword, cword)


class BlobWriter:
    """Appends chunks to a new blob file in `directory`; `finish` names it by its id."""

    def __init__(self, directory: Path, index: int, compressor: Compressor,
                 digester: Digester, chunk_size: int, *, v6: bool) -> None:
        self.index = index
        self.compressor, self.digester, self.chunk_size, self.v6 = (compressor, digester,
                                                                   chunk_size, v6)
        self._tmp = directory / f".blob-{os.getpid()}-{index}.tmp"
        self._file: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self._pos = 0
        self._uoffset = 0
        self._records: list[ChunkRecord] = []
        self._device_layout = v6 and compressor is Compressor.NONE

    def _write(self, data: bytes, hashed: bool = True) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise BuildError(f"cannot write blob {self._tmp}: {exc}") from exc
        if hashed:
            self._hash.update(data)
        self._pos += len(data)

    def add(self, stored: bytes, compressed: bool, size: int, digest: bytes) -> ChunkRecord:
        """Append one new chunk (`stored` bytes, `size` bytes uncompressed); its record."""
        if len(self._records) >= MAX_CHUNKS:
            raise BuildError(f"blob {self.index}: more than {MAX_CHUNKS} chunks")
        if self._device_layout:
            self._write(bytes(self._uoffset - self._pos))
        record = ChunkRecord(digest, self.index, CHUNK_COMPRESSED if compressed else 0,
                             len(stored), size, self._pos, self._uoffset, 0,
                             len(self._records), 0)
        self._write(stored)
        self._uoffset += -(-size // BLOCK) * BLOCK if self.v6 else size
        self._records.append(record)
        return record

    @property
    def chunk_count(self) -> int:
        return len(self._records)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def finish(self) -> BlobInfo:
        """Write the trailing sections, close, rename to the blob id; the blob's table info."""
        meta, toc_size, toc_digest = (self._write_meta() if self.v6 else (None, 0, None))
        self._file.close()
        blob_id = self._hash.hexdigest()
        os.replace(self._tmp, self._tmp.with_name(blob_id))
        return BlobInfo(index=self.index, blob_id=blob_id, compressor=self.compressor,
                        digester=self.digester, chunk_size=self.chunk_size,
                        chunk_count=len(self._records), compressed_size=self._pos,
                        uncompressed_size=self._uoffset,
                        features=V6_FEATURES if self.v6 else V5_FEATURES, meta=meta,
                        toc_size=toc_size, toc_digest=toc_digest)

    def _write_meta(self) -> tuple[BlobMetaLocation, int, bytes]:
        if self._device_layout:
            self._write(bytes(self._uoffset - self._pos))
        data_size = self._pos
        self._write(tar_header(b"image.blob", data_size))
        toc = [self._toc(b"image.blob", Compressor.NONE, self._hash.digest(), data_size,
                         data_size, self._uoffset)]
        ci = b"".join(encode_ci_v1(r).pack() for r in self._records)
        # Upstream ToC readers refuse lz4 sections, so only zstd is used for the ci array.
        ci_compressor = self.compressor if self.compressor is Compressor.ZSTD else Compressor.NONE
        stored, compressed = compress(ci_compressor, ci)
        ci_compressor = ci_compressor if compressed else Compressor.NONE
        meta = BlobMetaLocation(ci_compressor, self._pos, len(stored), len(ci))
        header = BlobMetaHeader(META_MAGIC, int(V6_FEATURES), ci_compressor, len(self._records),
                                meta.offset, len(stored), len(ci), 0, 0, 0, META_MAGIC).pack()
        self._write(stored)
        self._write(header)
        self._write(tar_header(b"blob.meta", len(stored) + META_HEADER_SIZE))
        toc.append(self._toc(b"blob.meta", ci_compressor, hashlib.sha256(ci).digest(),
                             meta.offset, len(stored), len(ci)))
        toc.append(self._toc(b"blob.meta.header", Compressor.NONE,
                             hashlib.sha256(header).digest(), meta.offset + len(stored),
                             META_HEADER_SIZE, META_HEADER_SIZE))
        digests = b"".join(r.digest for r in self._records)
        toc.append(self._toc(b"blob.digest", Compressor.NONE, hashlib.sha256(digests).digest(),
                             self._pos, len(digests), len(digests)))
        self._write(digests, hashed=False)  # the blob id excludes the digest array (§5.7)
        self._write(tar_header(b"blob.digest", len(digests)))
        entries = b"".join(toc)
        toc_header = tar_header(TOC_NAME, len(entries))
        self._write(entries)
        self._write(toc_header)
        return meta, len(entries) + len(toc_header), hashlib.sha256(entries + toc_header).digest()

    @staticmethod
    def _toc(name: bytes, compressor: Compressor, digest: bytes, offset: int, csize: int,
             usize: int) -> bytes:
        return TocEntry(_TOC_FLAGS[compressor], name, digest, offset, csize, usize).pack()
