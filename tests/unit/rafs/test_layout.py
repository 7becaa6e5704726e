"""Every on-disk record: size and key field offsets as rafs-format.md gives them, round trip."""

from __future__ import annotations

import pytest

from rafs import blobmeta
from rafs.errors import FormatError, RafsError
from rafs.records import Record
from rafs.v5 import layout as v5
from rafs.v6 import layout as v6

from .conftest import V5_DIR

SIZES: list[tuple[type[Record], int]] = [
    (v5.SuperBlockV5, 8192), (v5.ExtBlobEntryV5, 64), (v5.InodeV5, 128), (v5.ChunkRecord, 80),
    (v6.ErofsSuperBlock, 128), (v6.ExtSuperBlock, 256), (v6.DeviceSlot, 128),
    (v6.BlobTableEntryV6, 256), (v6.CompactInode, 32), (v6.ExtendedInode, 64),
    (v6.Dirent, 12), (v6.ChunkIndex, 8), (v6.XattrHeader, 12), (v6.XattrEntry, 4),
    (blobmeta.BlobMetaHeader, 4096), (blobmeta.ChunkInfoV1, 16), (blobmeta.ChunkInfoV2, 24),
    (blobmeta.TocEntry, 128), (blobmeta.TarHeader, 512),
]

# (record, field, offset from the reference tables)
OFFSETS: list[tuple[type[Record], str, int]] = [
    (v5.SuperBlockV5, "flags", 16), (v5.SuperBlockV5, "inode_table_entries", 56),
    (v5.SuperBlockV5, "ext_blob_table_offset", 72), (v5.InodeV5, "ino", 40),
    (v5.InodeV5, "mode", 60), (v5.InodeV5, "flags", 80), (v5.InodeV5, "child_index", 92),
    (v5.InodeV5, "name_size", 100), (v5.InodeV5, "rdev", 104), (v5.InodeV5, "mtime", 112),
    (v5.ChunkRecord, "blob_index", 32), (v5.ChunkRecord, "compressed_offset", 48),
    (v5.ChunkRecord, "index", 72), (v5.ChunkRecord, "crc32", 76),
    (v6.ErofsSuperBlock, "root_nid", 14), (v6.ErofsSuperBlock, "meta_blkaddr", 40),
    (v6.ErofsSuperBlock, "feature_incompat", 80), (v6.ErofsSuperBlock, "devt_slotoff", 88),
    (v6.ExtSuperBlock, "chunk_size", 20), (v6.ExtSuperBlock, "prefetch_table_size", 48),
    (v6.BlobTableEntryV6, "features", 84), (v6.BlobTableEntryV6, "blob_toc_size", 104),
    (v6.BlobTableEntryV6, "ci_uncompressed_size", 128),
    (v6.BlobTableEntryV6, "blob_meta_digest", 168), (v6.BlobTableEntryV6, "cipher_algo", 216),
    (v6.CompactInode, "i_u", 16), (v6.CompactInode, "uid", 24),
    (v6.ExtendedInode, "i_u", 16), (v6.ExtendedInode, "mtime", 32),
    (v6.ExtendedInode, "nlink", 44), (v6.Dirent, "file_type", 10),
    (blobmeta.BlobMetaHeader, "ctx_count", 56), (blobmeta.BlobMetaHeader, "magic2", 4092),
    (blobmeta.TocEntry, "digest", 24), (blobmeta.TocEntry, "uncompressed_size", 72),
    (blobmeta.TarHeader, "size", 124), (blobmeta.TarHeader, "magic", 257),
]




@pytest.mark.parametrize(("cls", "size"), SIZES)
def test_size(cls: type[Record], size: int) -> None:
    assert size == cls.SIZE


@pytest.mark.parametrize(("cls", "field", "offset"), OFFSETS)
def test_field_offset(cls: type[Record], field: str, offset: int) -> None:
    """Pack a record whose only non-zero field is `field`; find where its bytes land."""
    base = cls.STRUCT.unpack(bytes(cls.SIZE))
    names = cls._names()
    values = list(base)
    index = names.index(field)
    values[index] = b"\xa5" if isinstance(base[index], bytes) else 0xA5
    packed = cls(*values).pack()
    assert packed.index(b"\xa5") == offset


@pytest.mark.parametrize(("cls", "_size"), SIZES)
def test_round_trip(cls: type[Record], _size: int) -> None:
    raw = bytes((i * 7 + 3) % 251 for i in range(cls.SIZE))
    record = cls.unpack(raw)
    again = cls.unpack(record.pack())
    assert again == record


def test_validate_rejects_bad_values() -> None:
    good = v5.SuperBlockV5.unpack_from((V5_DIR / "bootstrap").read_bytes())
    good.validate()
    for change in ({"magic": 1}, {"version": 0x400}, {"sb_size": 4096},
                   {"chunk_size": 3000}, {"chunk_size": 1 << 25}):
        with pytest.raises(FormatError):
            v5.SuperBlockV5(**{**{n: getattr(good, n) for n in good._names()},
                               **change}).validate()
    with pytest.raises(RafsError):
        v6.ErofsSuperBlock(v6.EROFS_MAGIC, 0, v6.FEATURE_COMPAT_RAFS_V6, 9, 0, 0, 0, 0, 0, 0, 0,
                           0, b"", b"", 0xC, 0, 0, 11).validate()
    with pytest.raises(FormatError):
        blobmeta.BlobMetaHeader(blobmeta.META_MAGIC, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0).validate()
