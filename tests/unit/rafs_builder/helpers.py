"""Test support for the builder: a generated source tree and comparable snapshots.

`make_source` writes a small tree with every file type and the awkward cases (sparse and
multi-chunk files, duplicate content, a 3-way hard link group, a multi-block directory, a
deep chain of directories, long/absolute/dangling symlinks, xattrs with empty values,
devices, a fifo, a socket, odd modes and owners, non-UTF-8 names, fixed nanosecond mtimes).
`snapshot_dir` and `snapshot_image` describe a tree as {path: Item} so a source, an
unpacked copy and an image can be compared with one `==`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from rafs.cli.blobs import BlobFiles
from rafs.cli.walk import walk

CHUNK = 64 << 10  # the chunk size tests build with: multi-chunk files stay small
IS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Item:
    kind: str  # "reg", "dir", "lnk", "chr", "blk", "fifo", "sock"
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int  # regular files and symlinks; 0 otherwise
    content: str = ""  # sha256 of a regular file, target of a symlink
    rdev: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    mtime_ns: int = 0
    links: tuple[bytes, ...] = ()  # all names of a hard-linked regular file


_KINDS = {stat.S_IFREG: "reg", stat.S_IFDIR: "dir", stat.S_IFLNK: "lnk", stat.S_IFCHR: "chr",
          stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock"}


def _user_xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, b"user.probe", b"1")
        os.removexattr(path, b"user.probe")
        return True
    except OSError:
        return False


def make_source(root: Path, *, with_devices: bool = IS_ROOT) -> Path:
    """Write the generated tree under `root` (created); returns `root`."""
    root.mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello, rafs\n")
    (root / "exact").write_bytes(bytes(range(256)) * (CHUNK // 256))
    multi = hashlib.sha256(b"seed").digest() * ((3 * CHUNK + 1234) // 32 + 1)
    (root / "multi.bin").write_bytes(multi[:3 * CHUNK + 1234])
    (root / "dup-of-multi").write_bytes(multi[:3 * CHUNK + 1234])
    with open(root / "sparse", "wb") as f:
        f.truncate(5 * CHUNK + 17)
        f.seek(2 * CHUNK + 100)
        f.write(b"data in the middle")
    (root / "mod.pyc").write_bytes(b"\x42" * 100)
    (root / b"caf\xe9-latin1".decode("latin-1").encode("latin-1").decode(
        "utf-8", "surrogateescape")).write_bytes(b"non-utf8 name")
    links = root / "links"
    links.mkdir()
    (links / "a").write_bytes(b"shared inode\n" * 1000)
    os.link(links / "a", links / "b")
    os.link(links / "a", root / "link-c")
    (root / "sym-rel").symlink_to("small.txt")
    (root / "sym-abs").symlink_to("/etc/passwd")
    (root / "sym-dangling").symlink_to("nowhere/at/all")
    (root / "sym-long").symlink_to("x" * 250 + "/" + "y" * 250)
    wide = root / "wide"
    wide.mkdir()
    for i in range(400):  # 400 dirents of ~26 bytes: several 4 KiB directory blocks
        (wide / f"entry-{i:05d}-padding").write_bytes(b"%d" % (i % 7))
    deep = root
    for level in range(60):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"deep\n")
    (root / "emptydir").mkdir()
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
    if with_devices:
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(root / "loop", stat.S_IFBLK | 0o660, os.makedev(7, 300))
    os.chmod(root / "small.txt", 0o4751)
    os.chmod(root / "emptydir", 0o1777)
    if _user_xattrs_supported(root / "small.txt"):
        os.setxattr(root / "small.txt", b"user.greeting", b"hi")
        os.setxattr(root / "small.txt", b"user.empty", b"")
        os.setxattr(root / "wide", b"user.dir-attr", b"\x00\x01binary")
    if IS_ROOT:
        os.chown(root / "exact", 1000, 1000)
        os.chown(root / "multi.bin", 70000, 70001, follow_symlinks=False)
        os.chown(root / "sym-rel", 123, 456, follow_symlinks=False)
    _set_times(root)
    return root


def _set_times(root: Path) -> None:
    """Fixed, distinct mtimes (children before parents: writing a child touches its dir)."""
    paths = sorted((p for p in root.rglob("*")), key=lambda p: -len(p.parts))
    for i, path in enumerate(paths):
        when = 1_600_000_000_000_000_000 + i * 1_000_003_007
        os.utime(path, ns=(when, when), follow_symlinks=False)


def snapshot_dir(root: Path) -> dict[bytes, Item]:
    """{relative path: Item} of a directory on disk (not following symlinks)."""
    result: dict[bytes, Item] = {}
    groups: dict[tuple[int, int], list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = b"/" + os.path.relpath(full, os.fsencode(root))
            st = os.lstat(full)
            item = _item(st, full)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(rel)
            result[rel] = item
    for names in groups.values():
        for name in names:
            result[name] = replace(result[name], links=tuple(sorted(names)))
    return result


def _item(st: os.stat_result, full: bytes) -> Item:
    kind = _KINDS[stat.S_IFMT(st.st_mode)]
    content, size = "", 0
    if kind == "reg":
        with open(full, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
        size = st.st_size
    elif kind == "lnk":
        target = os.readlink(full)
        content, size = os.fsdecode(target), len(target)
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    if kind in ("reg", "dir"):
        xattrs = tuple(sorted((os.fsencode(n), os.getxattr(full, n))
                              for n in os.listxattr(full) if n.startswith("user.")))
    rdev = st.st_rdev & 0xFFFF_FFFF if kind in ("chr", "blk") else 0
    return Item(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, content, rdev,
                xattrs, st.st_mtime_ns)


def snapshot_image(blobs: BlobFiles) -> dict[bytes, Item]:
    """{path: Item} of an image, read through the reader's public API."""
    image = blobs.image
    result: dict[bytes, Item] = {}
    groups: dict[int, list[bytes]] = {}
    for path, inode in walk(image):
        if path == b"/":
            continue
        kind = _KINDS[stat.S_IFMT(inode.mode)]
        content, size = "", 0
        if kind == "reg":
            content = hashlib.sha256(blobs.read_file(inode.ino, inode.size)).hexdigest()
            size = inode.size
            if inode.nlink > 1:
                groups.setdefault(inode.ino, []).append(path)
        elif kind == "lnk":
            target = image.readlink(inode.ino)
            content, size = os.fsdecode(target), len(target)
        xattrs = tuple(sorted((k, v) for k, v in image.xattrs(inode.ino).items()
                              if k.startswith(b"user.")))
        result[path] = Item(kind, stat.S_IMODE(inode.mode), inode.uid, inode.gid, size,
                            content, inode.rdev, xattrs,
                            inode.mtime * 1_000_000_000 + inode.mtime_nsec)
    for names in groups.values():
        for name in names:
            result[name] = replace(result[name], links=tuple(sorted(names)))
    return result


def without(snapshot: dict[bytes, Item], *fields: str) -> dict[bytes, Item]:
    """The snapshot with some fields blanked (what an oracle cannot reproduce)."""
    blank = {"mtime_ns": 0, "links": (), "xattrs": (), "uid": 0, "gid": 0}
    return {path: replace(item, **{f: blank[f] for f in fields})
            for path, item in snapshot.items()}
