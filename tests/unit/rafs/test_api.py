"""The public surface of rafs is exactly its __all__."""

from __future__ import annotations

import types

import rafs


def test_all_is_exported_and_complete() -> None:
    assert sorted(rafs.__all__) == sorted(set(rafs.__all__))
    for name in rafs.__all__:
        assert hasattr(rafs, name), name
    # Submodules become attributes of the package once anything imports them (the builder,
    # the CLI, the test suite): only plain names count as the public surface.
    public = {n for n, v in vars(rafs).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public - {"annotations"} == {
        n for n in rafs.__all__ if not isinstance(getattr(rafs, n), types.ModuleType)
    }


def test_errors_carry_errno() -> None:
    import errno

    assert rafs.RafsError().errno == errno.EIO
    assert rafs.FormatError().errno == errno.EIO
    assert rafs.DigestMismatch().errno == errno.EIO
    assert rafs.NotFound().errno == errno.ENOENT
    assert rafs.NotADirectory().errno == errno.ENOTDIR
    assert issubclass(rafs.DigestMismatch, rafs.CorruptChunk)
    assert rafs.RafsError("x", errno=errno.EPERM).errno == errno.EPERM
