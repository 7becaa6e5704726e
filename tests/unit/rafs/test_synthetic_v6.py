"""v6 features the upstream fixtures lack, on images written by tests/unit/rafs/synth_v6.py."""

from __future__ import annotations

import stat
import time

import rafs
from rafs.plan import assemble

from . import synth_v6 as s


def _read(image: rafs.Image, blob: bytes, ino: int) -> bytes:
    size = image.inode(ino).size
    chunks = image.file_chunks(ino, 0, size)
    return assemble(chunks, lambda c: rafs.decode_chunk(
        c, blob[c.compressed_offset:c.compressed_offset + c.compressed_size],
        rafs.Compressor.NONE, rafs.Digester.SHA256), 0, size)


def test_multi_block_directory_lookup_and_readdir() -> None:
    names = [b"entry-%05d-%s" % (i, b"x" * (i % 40)) for i in range(3000)]
    bootstrap, _ = s.build(s.d({n: s.f(b"") for n in names}))
    image = rafs.Image.from_bytes(bootstrap)
    root = image.inode(image.root_ino)
    assert root.size > 20 * 4096  # many directory blocks
    for name in [*names[::37], names[-1], names[0]]:
        found = image.lookup(image.root_ino, name)
        assert found is not None and found.is_reg
    for probe in (b"", b"0", b"entry-", b"entry-99999", b"zzz", names[5] + b"!"):
        assert image.lookup(image.root_ino, probe) is None
    listed = list(image.readdir(image.root_ino))
    assert [n for _, n, _ in listed] == sorted([b".", b"..", *names])
    for i in range(0, len(listed), 97):
        assert list(image.readdir(image.root_ino, listed[i][0])) == listed[i + 1:]


def test_xattrs_compact_inodes_hardlinks_devices_holes() -> None:
    shared = s.f(b"same", compact=True)
    data = bytes(range(256)) * 64  # 4 chunks of 4096
    tree = s.d({
        b"a": shared, b"b": shared,
        b"x": s.f(b"v", xattrs={(1, b"foo"): b"bar", (6, b"selinux"): b"", (2, b""): b"acl"}),
        b"holes": s.f(data, holes=frozenset({0, 2})),
        b"dev": s.Node(stat.S_IFCHR | 0o600, rdev=0x0103),
        b"ln": s.link(b"a" * 300),
    })
    bootstrap, blob = s.build(tree)
    image = rafs.Image.from_bytes(bootstrap)
    a, b = image.lookup(image.root_ino, b"a"), image.lookup(image.root_ino, b"b")
    assert a is not None and a == b and a.nlink == 2 and (a.uid, a.mtime) == (1000, 0)
    x = image.lookup(image.root_ino, b"x")
    assert x is not None and x.uid == 70000
    assert image.xattrs(x.ino) == {b"user.foo": b"bar", b"security.selinux": b"",
                                   b"system.posix_acl_access": b"acl"}
    holes = image.lookup(image.root_ino, b"holes")
    assert holes is not None
    expected = bytes(4096) + data[4096:8192] + bytes(4096) + data[12288:]
    assert _read(image, blob, holes.ino) == expected
    kinds = [c.is_hole for c in image.file_chunks(holes.ino, 0, holes.size)]
    assert kinds == [True, False, True, False]
    dev = image.lookup(image.root_ino, b"dev")
    assert dev is not None and dev.is_special and dev.rdev == 0x0103
    ln = image.lookup(image.root_ino, b"ln")
    assert ln is not None and image.readlink(ln.ino) == b"a" * 300


def test_hundred_thousand_files_open_fast_and_lookup_without_scanning() -> None:
    dirs = {b"d%03d" % i: s.d({b"f%04d" % j: s.f(b"") for j in range(1000)})
            for i in range(100)}
    bootstrap, _ = s.build(s.d(dirs))
    start = time.perf_counter()
    image = rafs.Image.from_bytes(bootstrap)
    opened = time.perf_counter() - start
    d57 = image.lookup(image.root_ino, b"d057")
    assert d57 is not None
    start = time.perf_counter()
    for j in range(0, 1000, 10):
        assert image.lookup(d57.ino, b"f%04d" % j) is not None
    looked = time.perf_counter() - start
    assert image.inode_count == 100101
    assert opened < 0.5 and looked < 1.0, (opened, looked)
