"""The `rafs` command line end to end, and the v6 placement rules in isolation."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from rafs import open_image
from rafs.builder import build_image, new_directory
from rafs.builder.numbering import number_tree
from rafs.builder.tree import BytesContent, FileNode
from rafs.builder.v6place import BLOCK, MetaSpace, dir_size, place_inodes
from rafs.cli import main, parse_size
from rafs.v6.layout import LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN

from .helpers import make_source, snapshot_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cli")
    source = make_source(base / "src")
    assert main(["build", str(source), "-o", str(base / "out"), "--chunk-size", "64K",
                 "--compressor", "none", "--extended-inodes", "-q"]) == 0
    return source, base / "out"


def test_inspect_views(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, out = built
    bootstrap = str(out / "bootstrap")
    assert main(["inspect", bootstrap, "tree"]) == 0
    tree = capsys.readouterr().out
    assert "/links/a" in tree and "/sym-rel -> small.txt" in tree
    assert main(["inspect", bootstrap, "stat", "/small.txt"]) == 0
    assert "xattr: user.greeting=b'hi'" in capsys.readouterr().out
    assert main(["inspect", bootstrap, "chunks", "/multi.bin"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 4
    assert main(["inspect", bootstrap, "blobs"]) == 0
    assert "features=0x70000021" in capsys.readouterr().out


def test_check_and_unpack_to_dir_and_tar(built: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    source, out = built
    assert main(["check", str(out / "bootstrap")]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    assert main(["unpack", str(out / "bootstrap"), "--to-dir", str(tmp_path / "d")]) == 0
    assert snapshot_dir(tmp_path / "d") == snapshot_dir(source)
    assert main(["unpack", str(out / "bootstrap"), "--to-tar", str(tmp_path / "t.tar")]) == 0
    with tarfile.open(tmp_path / "t.tar") as archive:
        names = archive.getnames()
        assert "links/b" in names and "sock" not in names
        member = archive.getmember("small.txt")
        assert member.pax_headers["SCHILY.xattr.user.greeting"] == "hi"
        reader = archive.extractfile("multi.bin")
        assert reader is not None
        assert reader.read() == (source / "multi.bin").read_bytes()


def test_unpack_refuses_a_non_empty_target(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = built
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_bytes(b"")
    assert main(["unpack", str(out / "bootstrap"), "--to-dir", str(tmp_path / "busy")]) == 1


def test_check_reports_a_corrupt_blob(built: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, out = built
    image = open_image(out / "bootstrap")
    blob = (out / "blobs" / image.blobs[0].blob_id).read_bytes()
    broken = tmp_path / "blobs"
    broken.mkdir()
    damaged = bytearray(blob)
    damaged[4096 + 10] ^= 0xFF  # inside the first data chunk
    (broken / image.blobs[0].blob_id).write_bytes(bytes(damaged))
    assert main(["check", str(out / "bootstrap"), "--blob-dir", str(broken)]) == 2
    report = capsys.readouterr().out
    assert "FAIL" in report and "digest" in report


def test_build_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not-a-tar").write_bytes(b"plain text")
    assert main(["build", str(tmp_path / "not-a-tar"), "-o", str(tmp_path / "o")]) == 1
    assert "not a readable tar layer" in capsys.readouterr().err


def test_parse_size() -> None:
    assert [parse_size(s) for s in ("1M", "512k", "0x1000", "4096")] == \
        [1 << 20, 512 << 10, 4096, 4096]


def test_dir_size_never_splits_a_dirent() -> None:
    names = [b"%0200d" % i for i in range(40)]  # 212-byte dirents: 19 per block
    assert dir_size(names) == 2 * BLOCK + 2 * 212
    assert dir_size([b".", b".."]) == 27


def test_gaps_of_partial_blocks_are_reused() -> None:
    space = MetaSpace()
    space.take(100)
    space.remember_gap(space.cursor)
    space.cursor = 3 * BLOCK
    offset = space.take_gap(64)
    assert offset is not None and BLOCK + 100 <= offset < 2 * BLOCK and offset % 32 == 0
    assert space.take_gap(BLOCK) is None


def test_large_and_small_directories_get_their_layouts() -> None:
    root = new_directory()
    assert root.children is not None
    big = new_directory()
    assert big.children is not None
    for i in range(300):
        big.children[b"file-%04d" % i] = FileNode(mode=0o100644,
                                                   content=BytesContent(b"x"))
    root.children[b"big"] = big
    root.children[b"small"] = new_directory()
    numbering = number_tree(root)
    placed = place_inodes(numbering)
    by_name = {e.name: placed[e.index] for e in numbering.entries}
    assert by_name[b"small"].layout == LAYOUT_FLAT_INLINE
    assert by_name[b"big"].size > BLOCK and by_name[b"big"].data_offset % BLOCK == 0
    assert by_name[b"big"].layout in (LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN)
    assert placed[1].offset == BLOCK  # root first: nid 128 after the meta shift
    offsets = [p.offset for p in placed.values()]
    assert len(set(offsets)) == len(offsets)
    assert all(p.offset % 32 == 0 for p in placed.values())
    # EROFS: an inline tail shares its inode's block (chunk-based inodes may straddle).
    for entry in numbering.entries:
        p = placed[entry.index]
        if p.layout == LAYOUT_FLAT_INLINE:
            assert p.offset % BLOCK + p.inode_size + p.size % BLOCK <= BLOCK


def test_deep_tree_does_not_recurse(tmp_path: Path) -> None:
    node = root = new_directory()
    for _ in range(3000):  # deeper than Python's recursion limit
        child = new_directory()
        assert node.children is not None
        node.children[b"d"] = child
        node = child
    result = build_image(root, tmp_path / "bootstrap", tmp_path / "blobs")
    assert result.entries == 3001 and result.new_blob is None
    image = open_image(result.bootstrap)
    ino, depth = image.root_ino, 0
    while (found := image.lookup(ino, b"d")) is not None:
        ino, depth = found.ino, depth + 1
    assert depth == 3000

