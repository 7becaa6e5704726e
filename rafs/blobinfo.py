"""What an image says about each of its data blobs (v5 blob tables, v6 blob table).

`BlobInfo` is the version-neutral description a daemon needs to fetch and decode chunks:
the blob id (the blob's file name / registry digest), the algorithms, the sizes, and where
the blob meta (chunk-info array) and ToC live inside the blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from typing import Final

from .algorithms import Compressor, Digester
from .errors import FormatError, Unsupported


class BlobFeatures(IntFlag):
    """Blob feature flags (u32; v5 extended blob table, v6 blob table, meta header), §2.5."""

    ALIGNED = 0x1
    INLINED_FS_META = 0x2
    CHUNK_INFO_V2 = 0x4
    ZRAN = 0x8
    SEPARATE = 0x10
    INLINED_CHUNK_DIGEST = 0x20
    TARFS = 0x40
    BATCH = 0x80
    ENCRYPTED = 0x100
    IS_CHUNKDICT_GENERATED = 0x200
    IS_SEPARATED_WITH_PREFETCH_FILES = 0x400
    EXTERNAL = 0x800
    HAS_TAR_HEADER = 0x1000_0000
    HAS_TOC = 0x2000_0000
    CAP_TAR_TOC = 0x4000_0000
    V5_NO_EXT_BLOB_TABLE = 0x8000_0000


_COMPAT_MASK: Final = 0x0FFF  # low 16 bits outside this are incompatible features
_HIGH_KNOWN: Final = 0x7000_0000
# Features whose data path this reader does not implement.
UNSUPPORTED_DATA: Final = (BlobFeatures.ZRAN | BlobFeatures.BATCH | BlobFeatures.ENCRYPTED
                           | BlobFeatures.TARFS | BlobFeatures.SEPARATE | BlobFeatures.EXTERNAL)

MAX_UNCOMPRESSED_SIZE: Final = 1 << 44  # v6 blob table sanity bounds (§4.5)
MAX_COMPRESSED_SIZE: Final = 1 << 40


def check_features(value: int, where: str) -> BlobFeatures:
    """Reject feature bits a reader must not ignore (§2.5 compatibility rule)."""
    low = value & 0xFFFF
    if low & ~_COMPAT_MASK or value & 0xFFFF_0000 & ~_HIGH_KNOWN:
        raise Unsupported(f"{where}: incompatible blob features {value:#x}")
    return BlobFeatures(value)


@dataclass(frozen=True, slots=True)
class BlobMetaLocation:
    """Where the chunk-info array sits in the blob (v6), followed by its 4096-byte header."""

    compressor: Compressor  # of the chunk-info array
    offset: int  # bytes: start of the compressed array in the blob file
    compressed_size: int  # bytes
    uncompressed_size: int  # bytes


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One data blob of an image, as the bootstrap describes it."""

    index: int  # position in the image's blob table; ChunkRef.blob_index refers to it
    blob_id: str  # normally 64 lowercase hex chars: the blob's name
    compressor: Compressor  # of chunk data
    digester: Digester  # of chunk digests
    chunk_size: int  # bytes
    chunk_count: int | None  # distinct chunks; None if the image does not say (old v5)
    compressed_size: int | None  # bytes of the blob file (or its data section); None if unknown
    uncompressed_size: int | None  # bytes of the uncompressed address space; None if unknown
    features: BlobFeatures  # feature flags
    meta: BlobMetaLocation | None  # chunk-info array location (v6), else None
    toc_size: int  # bytes of ToC entries + tar header at the end of the blob; 0 if none
    toc_digest: bytes | None  # sha256 of the ToC, when recorded
    readahead_offset: int = 0  # v5 prefetch hint: bytes
    readahead_size: int = 0  # v5 prefetch hint: bytes

    def check_data_supported(self) -> None:
        """Raise Unsupported if reading chunk data of this blob needs a missing feature."""
        missing = self.features & UNSUPPORTED_DATA
        if missing:
            raise Unsupported(f"blob {self.index} ({self.blob_id}): features {missing!r}")


def decode_blob_id(raw: bytes, where: str) -> str:
    """An ASCII blob id from a NUL-padded field; ids are printable ASCII only."""
    text = raw.split(b"\0", 1)[0]
    if not text or not all(0x21 <= c < 0x7F for c in text) or b"/" in text:
        raise FormatError(f"{where}: invalid blob id {raw[:80]!r}")
    return text.decode("ascii")
