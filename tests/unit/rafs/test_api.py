"""The public surface of rafs is exactly its __all__."""

from __future__ import annotations

import rafs


def test_all_is_exported_and_complete() -> None:
    assert sorted(rafs.__all__) == sorted(set(rafs.__all__))
    for name in rafs.__all__:
        assert hasattr(rafs, name), name
    public = {n for n in vars(rafs) if not n.startswith("_")} - {"annotations"}
    internal = {"algorithms", "blobinfo", "blobmeta", "bootstrap", "errors", "image", "inode",
                "records", "v5", "v6"}
    assert public - internal == set(rafs.__all__)


def test_errors_carry_errno() -> None:
    import errno

    assert rafs.RafsError().errno == errno.EIO
    assert rafs.FormatError().errno == errno.EIO
    assert rafs.DigestMismatch().errno == errno.EIO
    assert rafs.NotFound().errno == errno.ENOENT
    assert rafs.NotADirectory().errno == errno.ENOTDIR
    assert issubclass(rafs.DigestMismatch, rafs.CorruptChunk)
    assert rafs.RafsError("x", errno=errno.EPERM).errno == errno.EPERM
