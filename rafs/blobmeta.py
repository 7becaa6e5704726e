"""Blob-side metadata of data blobs: blob meta (chunk-info array), ToC, digest array, blob id.

Layout (rafs-format §5): a v6 blob holds its chunk data, then optionally a tar header, the
chunk-info ("ci") array (possibly compressed) and a 4096-byte header describing it, a
chunk-digest array, an embedded bootstrap, and at its very end a Table of Contents: 128-byte
entries followed by a 512-byte tar header named `rafs.blob.toc`. Every reader here is pure
over bytes the caller fetched, validates sizes against the bootstrap's `BlobInfo` before
allocating, and raises RafsError.

Blob ids (§5.7): sha256 over every byte of the blob file except the chunk-digest array's
payload; without a digest array that is simply sha256 of the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from .algorithms import DIGEST_SIZE, Compressor
from .blobinfo import BlobFeatures, BlobInfo
from .bootstrap import unpack
from .chunk import decompress
from .errors import DigestMismatch, FormatError, InvalidArgument, Unsupported
from .records import Buffer, Record
from .v5.layout import CHUNK_COMPRESSED, CHUNK_HAS_CRC32, ChunkRecord

META_MAGIC: Final = 0xB10B_B10B  # §5.2.1
META_HEADER_SIZE: Final = 4096
TAR_HEADER_SIZE: Final = 512
TOC_NAME: Final = b"rafs.blob.toc"
TOC_ENTRY_DIGEST_ARRAY: Final = b"blob.digest"
TOC_ENTRY_BOOTSTRAP: Final = b"image.boot"
TOC_ENTRY_DATA: Final = b"image.blob"  # its digest also covers its tar header (§5.5)
MAX_TOC_SIZE: Final = 64 << 10  # bytes, entries plus tar header
MAX_CI_SIZE: Final = 1 << 30  # bytes of uncompressed chunk-info data we accept
MAX_SECTION_SIZE: Final = 1 << 30  # bytes of an uncompressed ToC section we accept

# ToC entry flags -> section compression (§5.5)
_TOC_COMPRESSORS: Final = {0x1: Compressor.NONE, 0x2: Compressor.ZSTD}
_V2_KNOWN_FLAGS: Final = 0x1F
_V2_COMPRESSED: Final = 0x01
_V2_HAS_CRC32: Final = 0x10
_MASK40: Final = (1 << 40) - 1


@dataclass(frozen=True, slots=True)
class BlobMetaHeader(Record, fmt="<IIIIQQQQQI4032xI"):
    """The 4096-byte header that follows the chunk-info array (§5.2.1)."""

    magic: int  # META_MAGIC
    features: int  # BlobFeatures; equals the blob table's
    ci_compressor: int  # Compressor id of the chunk-info array
    ci_entries: int  # chunk-info records (= chunk_count)
    ci_offset: int  # bytes: start of the compressed array in the blob
    ci_compressed_size: int  # bytes
    ci_uncompressed_size: int  # bytes
    ctx_offset: int  # bytes into the uncompressed ci data: ZRAN/batch contexts
    ctx_size: int  # bytes of contexts (and ZRAN dictionaries)
    ctx_count: int  # number of contexts
    magic2: int  # META_MAGIC again

    def validate(self) -> None:
        if self.magic != META_MAGIC or self.magic2 != META_MAGIC:
            raise FormatError(f"blob meta header: magic {self.magic:#x}/{self.magic2:#x}")


@dataclass(frozen=True, slots=True)
class ChunkInfoV1(Record, fmt="<QQ"):
    """A 16-byte chunk-info record (§5.2.2): sizes are stored minus one, split in two."""

    uncompressed_word: int  # size bits 20-23 @8, offset @12 (in place), size bits 0-19 @44
    compressed_word: int  # offset bits 0-39, size bits 20-23 @40, size bits 0-19 @44

    @staticmethod
    def _size(word: int) -> int:
        return ((((word >> 8) & 0xF) << 20) | (word >> 44)) + 1

    def record(self) -> tuple[int, int, int, int, int]:
        """(flags, compressed offset, compressed size, uncompressed offset, size)."""
        usize = self._size(self.uncompressed_word)
        csize = ((((self.compressed_word >> 40) & 0xF) << 20) | (self.compressed_word >> 44)) + 1
        flags = CHUNK_COMPRESSED if csize != usize else 0
        return (flags, self.compressed_word & _MASK40, csize,
                self.uncompressed_word & 0x0000_0FFF_FFFF_F000, usize)


@dataclass(frozen=True, slots=True)
class ChunkInfoV2(Record, fmt="<QQQ"):
    """A 24-byte chunk-info record (§5.2.3)."""

    uncompressed_word: int  # offset/4096 @0 (32 bits), size-1 @32 (24 bits), flags @56
    compressed_word: int  # offset @0 (40 bits), size @40 (24 bits, not minus one)
    data: int  # CRC32 (low 32 bits) with flag 0x10; ZRAN/batch placement otherwise

    def record(self) -> tuple[int, int, int, int, int]:
        """(chunk flags, compressed offset, compressed size, uncompressed offset, size)."""
        word = self.uncompressed_word
        v2_flags = word >> 56
        if v2_flags & ~_V2_KNOWN_FLAGS or v2_flags & 0x0E:
            raise Unsupported(f"chunk info v2 flags {v2_flags:#x} (ZRAN/batch/encrypted?)")
        flags = (CHUNK_COMPRESSED if v2_flags & _V2_COMPRESSED else 0) | (
            CHUNK_HAS_CRC32 if v2_flags & _V2_HAS_CRC32 else 0)
        return (flags, self.compressed_word & _MASK40, self.compressed_word >> 40,
                (word & 0xFFFF_FFFF) << 12, ((word >> 32) & 0xFF_FFFF) + 1)


@dataclass(frozen=True, slots=True)
class TocEntry(Record, fmt="<I4x16s32sQQQ48x"):
    """A 128-byte ToC entry (§5.5)."""

    flags: int  # section compression: 0x1 none, 0x2 zstd, 0x4 lz4_block
    name: bytes  # 16 bytes, NUL padded
    digest: bytes  # sha256 of the uncompressed section
    compressed_offset: int  # bytes: section start in the blob
    compressed_size: int  # bytes stored
    uncompressed_size: int  # bytes after decompression

    @property
    def section_name(self) -> bytes:
        return self.name.rstrip(b"\0")


@dataclass(frozen=True, slots=True)
class TarHeader(Record, fmt="<100s8s8s8s12s12s8s1s100s8s247s"):
    """A 512-byte GNU tar header; blobs use it to label sections (§5.4)."""

    name: bytes  # NUL padded
    mode: bytes  # octal text
    uid: bytes  # octal text
    gid: bytes  # octal text
    size: bytes  # 11 octal digits + NUL: bytes of the labelled section
    mtime: bytes  # octal text
    checksum: bytes  # octal text
    typeflag: bytes  # b"0"
    linkname: bytes  # zeros
    magic: bytes  # b"ustar  \0"
    rest: bytes  # zeros

    def section_size(self, where: str) -> int:
        text = self.size.rstrip(b"\0 ").lstrip(b" ")
        if not text or any(c not in b"01234567" for c in text):
            raise FormatError(f"{where}: tar size field {self.size!r}")
        return int(text, 8)


def read_toc(blob: Buffer) -> list[TocEntry]:
    """The ToC entries at the end of a blob (found from the trailing tar header)."""
    view = memoryview(blob).cast("B")
    if len(view) < TAR_HEADER_SIZE:
        raise FormatError(f"blob of {len(view)} bytes has no ToC")
    header_at = len(view) - TAR_HEADER_SIZE
    header = TarHeader.unpack_from(view, header_at)
    if header.name.rstrip(b"\0") != TOC_NAME:
        raise FormatError(f"blob: no ToC tar header at offset {header_at}")
    size = header.section_size("ToC tar header")
    if size % TocEntry.SIZE or size + TAR_HEADER_SIZE > min(MAX_TOC_SIZE, len(view)):
        raise FormatError(f"blob: ToC of {size} bytes")
    start = header_at - size
    return [unpack(TocEntry, view, start + i * TocEntry.SIZE, "ToC entry")
            for i in range(size // TocEntry.SIZE)]


def check_toc(blob: Buffer, info: BlobInfo) -> list[TocEntry]:
    """Read the ToC and check its size and digest against the bootstrap's blob table."""
    view = memoryview(blob).cast("B")
    entries = read_toc(view)
    size = len(entries) * TocEntry.SIZE + TAR_HEADER_SIZE
    if info.toc_size and size != info.toc_size:
        raise FormatError(f"blob {info.blob_id}: ToC is {size} bytes, table says "
                          f"{info.toc_size}")
    actual = hashlib.sha256(view[len(view) - size:]).digest()
    if info.toc_digest is not None and actual != info.toc_digest:
        raise DigestMismatch(f"blob {info.blob_id}: ToC digest {actual.hex()} != "
                             f"{info.toc_digest.hex()}")
    return entries


def find_entry(entries: list[TocEntry], name: bytes) -> TocEntry | None:
    return next((e for e in entries if e.section_name == name), None)


def read_section(blob: Buffer, entry: TocEntry, verify: bool = True) -> bytes:
    """The uncompressed content of a ToC section, checked against its sha256."""
    view = memoryview(blob).cast("B")
    end = entry.compressed_offset + entry.compressed_size
    if end > len(view) and entry.section_name != TOC_ENTRY_DATA:
        raise FormatError(f"ToC section {entry.section_name!r}: bytes "
                          f"{entry.compressed_offset}..{end} of {len(view)}")
    return decode_section(entry, view[entry.compressed_offset:end], verify)  # refuses data


def decode_section(entry: TocEntry, raw: Buffer, verify: bool = True) -> bytes:
    """The uncompressed content of a ToC section from its stored bytes (read by the caller,
    e.g. as one range request), checked against the entry's sha256."""
    where = f"ToC section {entry.section_name!r}"
    if entry.section_name == TOC_ENTRY_DATA:
        raise InvalidArgument(f"{where}: chunk data is not one stream; see check_data_section")
    if len(memoryview(raw)) != entry.compressed_size or \
            entry.uncompressed_size > MAX_SECTION_SIZE:
        raise FormatError(f"{where}: {len(memoryview(raw))} stored bytes, entry says "
                          f"{entry.compressed_size} ({entry.uncompressed_size} uncompressed)")
    compressor = _TOC_COMPRESSORS.get(entry.flags)
    if compressor is None:
        raise Unsupported(f"{where}: compression flags {entry.flags:#x}")
    if entry.uncompressed_size == 0:
        data = b""
    else:
        data = decompress(compressor, raw, entry.uncompressed_size, where, MAX_SECTION_SIZE)
    if verify:
        actual = hashlib.sha256(data).digest()
        if actual != entry.digest:
            raise DigestMismatch(f"{where}: sha256 {actual.hex()} != {entry.digest.hex()}")
    return data


def check_data_section(blob: Buffer, entry: TocEntry) -> None:
    """Check the `image.blob` entry: sha256 of the chunk data and its tar header.

    Quirk (fixture-verified): the entry's offset field holds the data size, not 0, and its
    digest covers the 512-byte tar header that follows the data.
    """
    view = memoryview(blob).cast("B")
    end = entry.compressed_size + TAR_HEADER_SIZE
    if entry.section_name != TOC_ENTRY_DATA or end > len(view):
        raise FormatError(f"ToC entry {entry.section_name!r}: not chunk data inside the blob")
    actual = hashlib.sha256(view[:end]).digest()
    if actual != entry.digest:
        raise DigestMismatch(f"chunk data: sha256 {actual.hex()} != {entry.digest.hex()}")


def compute_blob_id(blob: Buffer) -> str:
    """sha256 of the blob file minus its chunk-digest array payload (§5.7)."""
    view = memoryview(blob).cast("B")
    skip = None
    tail = bytes(view[len(view) - TAR_HEADER_SIZE:][:len(TOC_NAME) + 1])
    if len(view) >= TAR_HEADER_SIZE and tail == TOC_NAME + b"\0":
        skip = find_entry(read_toc(view), TOC_ENTRY_DIGEST_ARRAY)
    hasher = hashlib.sha256()
    if skip is None:
        hasher.update(view)
    else:
        end = skip.compressed_offset + skip.compressed_size
        if end > len(view):
            raise FormatError(f"digest array at {skip.compressed_offset}+"
                              f"{skip.compressed_size} outside the blob")
        hasher.update(view[:skip.compressed_offset])
        hasher.update(view[end:])
    return hasher.hexdigest()


def check_blob_id(blob: Buffer, info: BlobInfo) -> None:
    """Raise DigestMismatch unless the blob's bytes hash to the id the bootstrap records."""
    actual = compute_blob_id(blob)
    if actual != info.blob_id:
        raise DigestMismatch(f"blob {info.index}: content hashes to {actual}, "
                             f"bootstrap says {info.blob_id}")


class BlobMeta:
    """The chunk-info array of one blob: full chunk records by ci index (a ChunkSource)."""

    def __init__(self, info: BlobInfo, ci_data: bytes, digests: bytes | None = None) -> None:
        self.info = info
        self._v2 = bool(info.features & BlobFeatures.CHUNK_INFO_V2)
        self._cls: type[ChunkInfoV1 | ChunkInfoV2] = ChunkInfoV2 if self._v2 else ChunkInfoV1
        self.count = info.chunk_count or 0
        if len(ci_data) < self.count * self._cls.SIZE:
            raise FormatError(f"blob {info.blob_id}: {len(ci_data)} bytes of chunk info for "
                              f"{self.count} chunks")
        if digests is not None and len(digests) != self.count * DIGEST_SIZE:
            raise FormatError(f"blob {info.blob_id}: digest array of {len(digests)} bytes")
        self._ci = ci_data
        self._digests = digests

    @classmethod
    def from_blob(cls, blob: Buffer, info: BlobInfo) -> BlobMeta:
        """Decode the blob meta (and digest array, if any) of a whole blob held in memory."""
        view = memoryview(blob).cast("B")
        meta = info.meta
        if meta is None:
            raise Unsupported(f"blob {info.blob_id}: the image records no blob meta")
        ci = view[meta.offset:meta.offset + meta.compressed_size + META_HEADER_SIZE]
        digests = None
        if info.features & BlobFeatures.INLINED_CHUNK_DIGEST and info.features & \
                BlobFeatures.HAS_TOC:
            entry = find_entry(check_toc(view, info), TOC_ENTRY_DIGEST_ARRAY)
            digests = read_section(view, entry) if entry is not None else None
        return cls.from_section(bytes(ci), info, digests)

    @classmethod
    def from_section(cls, section: bytes, info: BlobInfo,
                     digests: bytes | None = None) -> BlobMeta:
        """Decode `ci_compressed_size + 4096` bytes read at the blob's ci offset."""
        meta = info.meta
        if meta is None:
            raise Unsupported(f"blob {info.blob_id}: the image records no blob meta")
        where = f"blob {info.blob_id} meta at offset {meta.offset}"
        if len(section) != meta.compressed_size + META_HEADER_SIZE:
            raise FormatError(f"{where}: section of {len(section)} bytes")
        header = unpack(BlobMetaHeader, section, meta.compressed_size, f"{where} header")
        if (header.features != info.features or header.ci_entries != info.chunk_count
                or header.ci_compressor != meta.compressor or header.ci_offset != meta.offset
                or header.ci_compressed_size != meta.compressed_size
                or header.ci_uncompressed_size != meta.uncompressed_size):
            raise FormatError(f"{where}: header disagrees with the blob table")
        if meta.uncompressed_size == 0:
            return cls(info, b"", digests)
        data = decompress(meta.compressor, section[:meta.compressed_size],
                          meta.uncompressed_size, where, MAX_CI_SIZE)
        return cls(info, data, digests)

    def chunk(self, ci_index: int) -> ChunkRecord:
        """The full chunk record of chunk `ci_index` (digest zero if not recorded)."""
        if not 0 <= ci_index < self.count:
            raise FormatError(f"blob {self.info.blob_id}: chunk index {ci_index} of "
                              f"{self.count}")
        entry = self._cls.unpack_from(self._ci, ci_index * self._cls.SIZE)
        flags, coff, csize, uoff, usize = entry.record()
        crc = entry.data & 0xFFFF_FFFF if isinstance(entry, ChunkInfoV2) else 0
        digest = bytes(DIGEST_SIZE)
        if self._digests is not None:
            digest = self._digests[ci_index * DIGEST_SIZE:(ci_index + 1) * DIGEST_SIZE]
        return ChunkRecord(digest, self.info.index, flags, csize, usize, coff, uoff, 0,
                           ci_index, crc if flags & CHUNK_HAS_CRC32 else 0)
