"""Compression and digest algorithm ids shared by v5, v6 and blob meta (rafs-format §2.1-2.4).

The v5 superblock and the v6 extended superblock select algorithms with flag bits; the v6
blob table and blob meta header use small integer ids. Both map onto the enums below.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum, IntFlag
from typing import Final, TypeVar

import blake3

from .errors import FormatError, Unsupported

T = TypeVar("T")


class Compressor(IntEnum):
    """Chunk compression algorithm ids (§2.1)."""

    NONE = 0
    LZ4_BLOCK = 1
    GZIP = 2
    ZSTD = 3


class Digester(IntEnum):
    """Digest algorithm ids (§2.2); both produce 32 bytes."""

    BLAKE3 = 0
    SHA256 = 1


class RafsFlags(IntFlag):
    """Superblock flags (u64; v5 `flags`, v6 extended superblock `flags`), §2.4."""

    COMPRESSION_NONE = 0x1
    COMPRESSION_LZ4 = 0x2
    HASH_BLAKE3 = 0x4
    HASH_SHA256 = 0x8
    EXPLICIT_UID_GID = 0x10
    HAS_XATTR = 0x20
    COMPRESSION_GZIP = 0x40
    COMPRESSION_ZSTD = 0x80
    INLINED_CHUNK_DIGEST = 0x100
    TARFS_MODE = 0x200
    ENCRYPTION_NONE = 0x0100_0000
    ENCRYPTION_AES128XTS = 0x0200_0000


KNOWN_FLAGS: Final = int(
    RafsFlags.COMPRESSION_NONE | RafsFlags.COMPRESSION_LZ4 | RafsFlags.HASH_BLAKE3
    | RafsFlags.HASH_SHA256 | RafsFlags.EXPLICIT_UID_GID | RafsFlags.HAS_XATTR
    | RafsFlags.COMPRESSION_GZIP | RafsFlags.COMPRESSION_ZSTD
    | RafsFlags.INLINED_CHUNK_DIGEST | RafsFlags.TARFS_MODE | RafsFlags.ENCRYPTION_NONE
    | RafsFlags.ENCRYPTION_AES128XTS
)

_COMPRESSOR_BITS: Final = {
    RafsFlags.COMPRESSION_NONE: Compressor.NONE,
    RafsFlags.COMPRESSION_LZ4: Compressor.LZ4_BLOCK,
    RafsFlags.COMPRESSION_GZIP: Compressor.GZIP,
    RafsFlags.COMPRESSION_ZSTD: Compressor.ZSTD,
}
_DIGESTER_BITS: Final = {
    RafsFlags.HASH_BLAKE3: Digester.BLAKE3,
    RafsFlags.HASH_SHA256: Digester.SHA256,
}

DIGEST_SIZE: Final = 32


def algorithms_from_flags(flags: int, *, legacy_defaults: bool) -> tuple[Compressor, Digester]:
    """Map superblock flags to (compressor, digester).

    v5 images may omit the bits (then lz4_block and blake3 apply, as in upstream's v5
    loader); v6 requires exactly one of each (`legacy_defaults=False`).
    """
    if flags & ~KNOWN_FLAGS:
        raise Unsupported(f"unknown superblock flags {flags & ~KNOWN_FLAGS:#x}")
    compressor = _pick(flags, _COMPRESSOR_BITS, Compressor.LZ4_BLOCK, legacy_defaults, "compressor")
    digester = _pick(flags, _DIGESTER_BITS, Digester.BLAKE3, legacy_defaults, "digester")
    return compressor, digester


def _pick(flags: int, bits: dict[RafsFlags, T], default: T, allow_none: bool, what: str) -> T:
    found = [value for bit, value in bits.items() if flags & bit]
    if len(found) == 1:
        return found[0]
    if not found and allow_none:
        return default
    raise FormatError(f"superblock flags {flags:#x} select {len(found)} {what}s, need one")


def compressor_from_id(value: int, where: str) -> Compressor:
    try:
        return Compressor(value)
    except ValueError:
        raise Unsupported(f"{where}: unknown compressor id {value}") from None


def digester_from_id(value: int, where: str) -> Digester:
    try:
        return Digester(value)
    except ValueError:
        raise Unsupported(f"{where}: unknown digester id {value}") from None


def digest(algorithm: Digester, data: bytes | memoryview) -> bytes:
    """The 32-byte digest of `data` with the image's digester."""
    if algorithm is Digester.BLAKE3:
        return blake3.blake3(data).digest()
    return hashlib.sha256(data).digest()
