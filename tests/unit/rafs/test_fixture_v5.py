"""The upstream-built RAFS v5 fixture (SHA-256, uncompressed chunks) reads exactly."""

from __future__ import annotations

import hashlib
import json
import posixpath
import stat
from typing import Any

import pytest

import rafs
from rafs.algorithms import digest

from .conftest import V5_DIR, Blobs, walk

ROOT_DIGEST = "14af3c0fe575eff6d0d8158e0990e41d4c37494e8005aada7885b36b37ad1886"
BLOB_ID = "7334a2594e133cf8ae364189c2276b090fc490c627bcc3fb1077f0419a538e00"


def _expected() -> tuple[Any, list[tuple[str, str]]]:
    text = (V5_DIR / "tree.result").read_text()
    end = text.index("\n]\n") + 3
    md5s = [tuple(line.split(None, 1)) for line in text[end:].splitlines() if line.strip()]
    return json.loads(text[:end]), sorted((path, md5) for md5, path in md5s)


def _tree_json(image: rafs.Image, ino: int, name: str) -> dict[str, Any]:
    contents: list[dict[str, Any]] = []
    for _, child_name, child in image.readdir(ino):
        if child_name in (b".", b".."):
            continue
        text = child_name.decode()
        if child.is_dir:
            contents.append(_tree_json(image, child.ino, text))
        elif child.is_symlink:
            contents.append({"type": "link", "name": text,
                             "target": image.readlink(child.ino).decode(), "contents": []})
        else:
            contents.append({"type": "file", "name": text})
    return {"type": "directory", "name": name, "contents": contents}


def _resolves_to_dir(image: rafs.Image, link_dir: str, target: str) -> bool:
    """What `tree` counts: does a symlink point at a directory inside the image?"""
    path = posixpath.normpath(posixpath.join(link_dir, target))
    inode: rafs.Inode | None = image.inode(image.root_ino)
    for part in path.strip("/").split("/"):
        if part and inode is not None:
            inode = image.lookup(inode.ino, part.encode())
    return inode is not None and inode.is_dir


def test_tree_json_matches_tree_result(v5_image: rafs.Image) -> None:
    expected, _ = _expected()
    tree = _tree_json(v5_image, v5_image.root_ino, "")
    dirs = files = 0
    for path, inode in walk(v5_image):
        if inode.is_symlink:
            link_dir = posixpath.dirname(path.decode())
            is_dir = _resolves_to_dir(v5_image, link_dir, v5_image.readlink(inode.ino).decode())
            dirs, files = dirs + is_dir, files + (not is_dir)
        else:
            dirs, files = dirs + inode.is_dir, files + (not inode.is_dir)
    assert [tree, {"type": "report", "directories": dirs, "files": files}] == expected


def test_every_regular_file_md5(v5_image: rafs.Image, v5_blobs: Blobs) -> None:
    _, expected = _expected()
    actual = sorted((path.decode(), hashlib.md5(v5_blobs.read(inode.ino)).hexdigest())
                    for path, inode in walk(v5_image) if inode.is_reg)
    assert actual == expected


def test_image_facts(v5_image: rafs.Image) -> None:
    assert v5_image.version == 5
    assert v5_image.root_ino == 1
    assert v5_image.inode_count == 51
    assert v5_image.prefetch_inos == ()
    assert v5_image.chunk_size == 1 << 20
    (blob,) = v5_image.blobs
    assert blob.blob_id == BLOB_ID
    assert (blob.compressor, blob.digester) == (rafs.Compressor.NONE, rafs.Digester.SHA256)
    assert (blob.chunk_count, blob.compressed_size, blob.uncompressed_size) == (
        23, 3508766, 3508766)


def test_hardlink_group_shares_one_inode(v5_image: rafs.Image) -> None:
    paths = [b"/hardlink-test/foo", b"/hardlink-test/test.sh", b"/normal-file-test/test.sh"]
    inodes = {path: inode for path, inode in walk(v5_image)}
    group = {inodes[p] for p in paths}
    assert len(group) == 1
    (inode,) = group
    assert inode.nlink == 3 and inode.is_reg and inode.size == 944


def test_root_and_dot_entries(v5_image: rafs.Image) -> None:
    root = v5_image.inode(1)
    assert root.is_dir and root.parent == 1 and stat.S_IMODE(root.mode) == 0o755
    entries = list(v5_image.readdir(1))
    assert [name for _, name, _ in entries] == [b".", b"..", b"hardlink-test",
                                               b"normal-file-test", b"symlink-test"]
    assert entries[1][2].ino == 1
    sub = v5_image.lookup(1, b"symlink-test")
    assert sub is not None
    parent = v5_image.lookup(sub.ino, b"..")
    assert parent is not None and parent.ino == 1
    assert v5_image.lookup(1, b".") == root


def test_readdir_resumes_from_any_index(v5_image: rafs.Image) -> None:
    ino = v5_image.lookup(1, b"symlink-test").ino  # type: ignore[union-attr]
    full = list(v5_image.readdir(ino))
    for i, (next_index, _, _) in enumerate(full):
        assert list(v5_image.readdir(ino, next_index)) == full[i + 1:]


def test_lookup_finds_every_entry_and_rejects_missing(v5_image: rafs.Image) -> None:
    for path, inode in walk(v5_image):
        parent_path, _, name = path.rpartition(b"/")
        parent = v5_image.inode(1)
        for part in parent_path.split(b"/")[1:]:
            parent = v5_image.lookup(parent.ino, part)  # type: ignore[assignment]
        assert v5_image.lookup(parent.ino, name) == inode
        assert v5_image.lookup(parent.ino, name + b"~") is None
        assert v5_image.lookup(parent.ino, b"\0") is None


def test_holes_at_head_middle_tail_read_and_chunks_verify(v5_image: rafs.Image,
                                                          v5_blobs: Blobs) -> None:
    holes = v5_image.lookup(v5_image.lookup(1, b"normal-file-test").ino,  # type: ignore
                            b"holefiles")
    assert holes is not None
    for _, name, inode in v5_image.readdir(holes.ino, 2):
        whole = v5_blobs.read(inode.ino)
        assert len(whole) == inode.size
        for offset, size in [(0, 1), (4095, 2), (inode.size - 1, 10), (1 << 20, 5000)]:
            assert v5_blobs.read(inode.ino, offset, size) == whole[offset:offset + size], name


def test_every_chunk_digest_verifies(v5_image: rafs.Image, v5_blobs: Blobs) -> None:
    seen = 0
    for _, inode in walk(v5_image):
        if inode.is_reg:
            for chunk in v5_image.file_chunks(inode.ino, 0, inode.size):
                assert chunk.digest is not None and not chunk.is_hole
                raw = v5_blobs.data[0][chunk.compressed_offset:][:chunk.compressed_size]
                assert digest(rafs.Digester.SHA256, raw) == chunk.digest
                seen += 1
    assert seen == 29


def test_root_inode_digest(v5_image: rafs.Image) -> None:
    assert v5_image.verify_inode_digests().hex() == ROOT_DIGEST


def test_blob_id_is_sha256_of_blob(v5_image: rafs.Image, v5_blobs: Blobs) -> None:
    rafs.check_blob_id(v5_blobs.data[0], v5_image.blobs[0])
    assert rafs.compute_blob_id(v5_blobs.data[0]) == BLOB_ID
    with pytest.raises(rafs.DigestMismatch):
        rafs.check_blob_id(v5_blobs.data[0][:-1], v5_image.blobs[0])


def test_symlink_and_type_errors(v5_image: rafs.Image) -> None:
    sym = v5_image.lookup(4, b"root-1")
    assert sym is not None and sym.is_symlink
    assert v5_image.readlink(sym.ino) == b"/" * 17
    with pytest.raises(rafs.InvalidArgument):
        v5_image.readlink(1)
    with pytest.raises(rafs.NotADirectory):
        v5_image.lookup(sym.ino, b"x")
    with pytest.raises(rafs.InvalidArgument):
        v5_image.file_chunks(1, 0, 10)
    with pytest.raises(rafs.NotFound):
        v5_image.inode(9999)
    with pytest.raises(rafs.NotFound):  # index 6 is the second link of inode 5
        v5_image.inode(6)
    assert v5_image.xattrs(1) == {}
