"""OCI layers: order, whiteouts, opaque directories, hard links, compression, hostile tars."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from rafs import open_image
from rafs.algorithms import Compressor
from rafs.builder import BuildError, BuildOptions, UnsafeEntry, build_from_layers
from rafs.cli.blobs import BlobFiles

from .helpers import CHUNK, snapshot_image

Member = tuple[str, str, bytes | str]  # (name, type, data or link target)


def _tar(path: Path, members: list[Member], compress: str = "") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1_700_000_000, 0o644
            data = None
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size, data = len(payload), io.BytesIO(payload)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind in ("link", "sym"):
                info.type = tarfile.LNKTYPE if kind == "link" else tarfile.SYMTYPE
                assert isinstance(payload, str)
                info.linkname = payload
            elif kind == "xattr":
                assert isinstance(payload, bytes)
                info.size, data = len(payload), io.BytesIO(payload)
                info.pax_headers = {"SCHILY.xattr.user.k": "v"}
            archive.addfile(info, data)
    raw = buf.getvalue()
    if compress == "gz":
        raw = gzip.compress(raw, mtime=0)
    elif compress == "zst":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return path


def _tree(tmp_path: Path, layers: list[Path]) -> dict[bytes, tuple[str, str]]:
    result = build_from_layers(layers, tmp_path / "out" / "bootstrap", tmp_path / "out" / "blobs",
                               BuildOptions(6, CHUNK, Compressor.ZSTD))
    with BlobFiles(open_image(result.bootstrap), tmp_path / "out" / "blobs") as blobs:
        return {path: (item.kind, item.content) for path, item in snapshot_image(blobs).items()}


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compress", ["", "gz", "zst"])
def test_layers_apply_in_order_with_whiteouts(tmp_path: Path, compress: str) -> None:
    lower = _tar(tmp_path / "l1", [
        ("etc", "dir", b""), ("etc/keep", "file", b"keep"), ("etc/gone", "file", b"old"),
        ("opt", "dir", b""), ("opt/a", "file", b"a"), ("opt/sub", "dir", b""),
        ("opt/sub/b", "file", b"b"), ("replaced", "dir", b""), ("replaced/x", "file", b"x"),
        ("./data", "file", b"v1"),
    ], compress)
    upper = _tar(tmp_path / "l2", [
        ("etc/.wh.gone", "file", b""), ("opt/.wh..wh..opq", "file", b""),
        ("opt/new", "file", b"new"), ("replaced", "file", b"now a file"),
        ("data", "file", b"v2"), ("etc/hard", "link", "etc/keep"),
        ("implied/deep/file", "xattr", b"parents were never listed"),
    ], compress)
    tree = _tree(tmp_path, [lower, upper])
    assert tree == {
        b"/data": ("reg", _sha(b"v2")),
        b"/etc": ("dir", ""), b"/etc/keep": ("reg", _sha(b"keep")),
        b"/etc/hard": ("reg", _sha(b"keep")),
        b"/implied": ("dir", ""), b"/implied/deep": ("dir", ""),
        b"/implied/deep/file": ("reg", _sha(b"parents were never listed")),
        b"/opt": ("dir", ""), b"/opt/new": ("reg", _sha(b"new")),
        b"/replaced": ("reg", _sha(b"now a file")),
    }


def test_whiteout_in_same_layer_does_not_hide_its_entries(tmp_path: Path) -> None:
    layer = _tar(tmp_path / "l", [("f", "file", b"mine"), (".wh.f", "file", b"")])
    assert _tree(tmp_path, [layer]) == {b"/f": ("reg", _sha(b"mine"))}


def test_tar_hard_links_share_an_inode_and_xattrs_survive(tmp_path: Path) -> None:
    layer = _tar(tmp_path / "l", [("a", "xattr", b"payload"), ("b", "link", "a")])
    result = build_from_layers([layer], tmp_path / "bootstrap", tmp_path / "blobs")
    image = open_image(result.bootstrap)
    a, b = image.lookup(image.root_ino, b"a"), image.lookup(image.root_ino, b"b")
    assert a is not None and b is not None and a.ino == b.ino and a.nlink == 2
    assert image.xattrs(a.ino) == {b"user.k": b"v"}


@pytest.mark.parametrize(("members", "error"), [
    ([("../escape", "file", b"x")], UnsafeEntry),
    ([("a/../../escape", "file", b"x")], UnsafeEntry),
    ([("/etc/passwd", "file", b"x")], UnsafeEntry),
    ([("h", "link", "../outside")], UnsafeEntry),
    ([("h", "link", "/etc/passwd")], UnsafeEntry),
    ([("h", "link", "missing")], UnsafeEntry),
    ([("f", "file", b"x"), ("f/child", "file", b"y")], BuildError),
])
def test_hostile_layers_are_refused(tmp_path: Path, members: list[Member],
                                    error: type[Exception]) -> None:
    layer = _tar(tmp_path / "evil", members)
    with pytest.raises(error):
        build_from_layers([layer], tmp_path / "out" / "bootstrap", tmp_path / "out" / "blobs")
    assert not (tmp_path / "out" / "bootstrap").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil", "out"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["evil"]


def test_declared_size_beyond_the_archive_is_refused(tmp_path: Path) -> None:
    path = _tar(tmp_path / "l", [("big", "file", b"x" * 1000)])
    raw = bytearray(path.read_bytes())
    header = raw.find(b"big\0")
    assert header >= 0
    # Rewrite the size field to 8 GiB - 1 (the largest 11-digit octal) and fix the checksum.
    start = header
    raw[start + 124:start + 136] = b"%011o\0" % ((1 << 33) - 1)
    raw[start + 148:start + 156] = b" " * 8
    raw[start + 148:start + 156] = b"%06o\0 " % sum(raw[start:start + 512])
    path.write_bytes(bytes(raw[:start + 512 + 1024]))
    with pytest.raises(BuildError, match=r"archive ends|unexpected end"):
        build_from_layers([path], tmp_path / "bootstrap", tmp_path / "blobs")


def test_garbage_is_not_a_layer(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b" + b"\xff" * 100)
    with pytest.raises(BuildError, match="not a readable tar layer"):
        build_from_layers([junk], tmp_path / "bootstrap", tmp_path / "blobs")
