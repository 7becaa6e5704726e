"""A host directory tree with every kind of file a virtio-fs daemon must serve, and manifests.

:func:`make_tree` builds the tree (needs root: it chowns, mknods and sets setuid bits).
:func:`host_manifest` computes its canonical listing in Python; the guest computes the same
listing with ``vmtool manifest`` (``hack/vm/guest/vmtool.c``, run by :func:`guest_manifest_script`)
and :func:`parse_manifest` reads it back, so a test asserts ``guest == host`` entry by entry.
Two independent implementations (Python on the host, C in the guest) must agree.

What a manifest records per path (relative to the share root, as bytes): type, permission bits
(incl. setuid/setgid/sticky), uid, gid, mtime in ns, size (regular files and symlinks), nlink
(non-directories), rdev (devices), symlink target, all xattrs (name and exact value), the
SHA-256 of regular files, and hard-link identity (``link_group``: the smallest path sharing the
inode).  Deliberately left out, because a guest legitimately sees them differently or they are
filesystem-specific rather than served data: atime (reads update it), ctime (not settable),
inode numbers themselves (daemons may renumber), st_blocks/st_blksize, directory size and
directory nlink (filesystem-specific).

Large files: a regular file over ``SAMPLE_THRESHOLD`` (64 MiB) is hashed over sampled windows:
1 MiB at every GiB boundary plus the last 1 MiB (``sha256s``).  The tree's sparse file has an
apparent size of 5 GiB + 12345 (so offsets beyond 4 GiB, i.e. 64-bit FUSE offsets, and an
unaligned EOF are exercised) with its data extents inside those windows, so every written byte
is checked while the guest reads only ~7 MiB (reading 5 GiB under TCG would take minutes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

SAMPLE_THRESHOLD: Final = 64 << 20  # keep in sync with vmtool.c
SAMPLE_STRIDE: Final = 1 << 30
SAMPLE_LEN: Final = 1 << 20

SPARSE_SIZE: Final = (5 << 30) + 12345
BIG_DIR_ENTRIES: Final = 2000
MTIME_BASE_NS: Final = 1_600_000_000_123_456_789
LONG_TARGET: Final = "long-target/" * 83 + "end"  # 999 bytes, dangling

_ESCAPED: Final = frozenset(b"\\:,=")


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One manifest entry; None means "not meaningful for this type"."""

    type: str  # f d l c b p s
    mode: int  # st_mode & 0o7777
    uid: int
    gid: int
    mtime_ns: int
    size: int | None = None  # regular files and symlinks
    nlink: int | None = None  # non-directories
    rdev: tuple[int, int] | None = None  # (major, minor) of devices
    target: bytes | None = None  # symlink target
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # sorted (name, value)
    sha256: str | None = None  # regular files: whole-file or sampled digest
    sampled: bool = False  # sha256 covers only the sampled windows
    link_group: bytes | None = None  # smallest path with the same inode, if nlink > 1


Manifest = dict[bytes, Entry]


# ---- building the tree ---------------------------------------------------------------------


def make_tree(root: Path, *, big_dir_entries: int = BIG_DIR_ENTRIES) -> Path:
    """Create the test tree in the (new or empty) directory ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0x5EED)
    r = os.fsencode(root)

    def p(*parts: str | bytes) -> bytes:
        return os.path.join(r, *(os.fsencode(x) for x in parts))

    os.mkdir(p("files"))
    sizes = {"empty": 0, "one": 1, "page-1": 4095, "page": 4096, "128k+3": (128 << 10) + 3,
             "3m+17": (3 << 20) + 17}
    for name, size in sizes.items():
        _write(p("files", name), rng.randbytes(size))
    _make_sparse(p("files", "sparse-5g"), rng)

    # hard links: one inode, three names in two directories
    os.mkdir(p("links"))
    _write(p("links", "hard-a"), b"hard linked\n")
    os.link(p("links", "hard-a"), p("links", "hard-b"))
    os.link(p("links", "hard-a"), p("files", "hard-c"))
    os.symlink("../files/one", p("links", "rel"))
    os.symlink("/etc/hostname", p("links", "abs"))
    os.symlink("does/not/exist", p("links", "dangling"))
    os.symlink(LONG_TARGET, p("links", "long"))
    os.symlink("../nested", p("links", "to-dir"))

    nested = p("nested", "a", "b", "c", "d", "e")
    os.makedirs(nested)
    _write(os.path.join(nested, b"deep"), b"bottom\n")

    os.mkdir(p("big"))
    for i in range(big_dir_entries):
        # long names so READDIR needs many round trips (each reply holds about one page)
        _write(p("big", f"entry-{i:05d}-{'x' * 40}"), b"")

    os.mkdir(p("odd"))
    for odd in (b"with space", b"new\nline", b"tab\there", b"back\\slash=eq:col,comma",
                b"\xff\xfe-not-utf8-\xe9", "ünïcödé-名前".encode(), b"n" * 255, b"-dash"):
        _write(p("odd", odd), odd)

    os.mkdir(p("special"))
    os.mkfifo(p("special", "fifo"))
    os.mknod(p("special", "char"), stat.S_IFCHR | 0o620, os.makedev(1, 3))
    os.mknod(p("special", "block"), stat.S_IFBLK | 0o660, os.makedev(8, 17))
    # major >= 256 and minor >= 256 check the split dev_t encoding end to end
    os.mknod(p("special", "char-big"), stat.S_IFCHR | 0o600, os.makedev(4000, 70000))
    _make_socket(p("special"), b"socket")

    _set_xattrs(p, rng)
    _set_owners_and_modes(p)
    _set_mtimes(r)
    return root


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _make_sparse(path: bytes, rng: random.Random) -> None:
    # extents inside the sampled windows (see module docstring), one straddling 4 GiB
    with open(path, "wb") as f:
        f.truncate(SPARSE_SIZE)
        for offset, length in ((0, 4096), ((1 << 30) + 100, 5000), ((4 << 30) - 3, 64 << 10),
                               (SPARSE_SIZE - 1000, 1000)):
            f.seek(offset)
            f.write(rng.randbytes(length))


def _make_socket(directory: bytes, name: bytes) -> None:
    # bind through /proc/self/fd so a deep tmp path cannot exceed sun_path's 108 bytes
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(b"/proc/self/fd/%d/%s" % (dfd, name))
    finally:
        os.close(dfd)


def _set_xattrs(p: _PathFn, rng: random.Random) -> None:
    os.setxattr(p("files", "one"), "user.empty", b"")
    os.setxattr(p("files", "one"), "user.binary", bytes(range(256)))
    os.setxattr(p("files", "one"), "user.text", b"hello xattr")
    os.setxattr(p("files", "page"), "user.large", rng.randbytes(2000))
    os.setxattr(p("nested"), "user.on-dir", b"\x00dir\xff")
    os.setxattr(p("links", "hard-a"), "user.shared", b"same inode")


def _set_owners_and_modes(p: _PathFn) -> None:
    # chown first: it clears setuid/setgid, so the modes must come after
    owners = {("files", "page"): (1000, 1000), ("files", "128k+3"): (65534, 65534),
              ("nested",): (4242, 0), ("special", "fifo"): (1000, 4242)}
    for parts, (uid, gid) in owners.items():
        os.chown(p(*parts), uid, gid)
    os.lchown(p("links", "rel"), 1000, 1000)
    modes = {("files", "one"): 0o4755, ("files", "page-1"): 0o0000, ("files", "empty"): 0o444,
             ("files", "page"): 0o2640, ("nested", "a"): 0o2755, ("nested", "a", "b"): 0o1777,
             ("odd",): 0o700, ("files", "3m+17"): 0o6711,
             # mknod/bind modes depend on the umask; pin them
             ("special", "char"): 0o620, ("special", "block"): 0o660,
             ("special", "char-big"): 0o600, ("special", "socket"): 0o777}
    for parts, mode in modes.items():
        os.chmod(p(*parts), mode)
    os.chmod(p(), 0o755)


def _set_mtimes(root: bytes) -> None:
    # children before parents: creating an entry changes its directory's mtime
    paths = [path for _, path, _ in _walk(root)]
    for i, path in enumerate(sorted(paths, key=lambda x: -x.count(b"/"))):
        ns = MTIME_BASE_NS + i * 1_000_000_007
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


class _PathFn(Protocol):
    """The path-joining helper of make_tree: parts below the tree root -> absolute bytes."""

    def __call__(self, *parts: str | bytes) -> bytes: ...


# ---- manifests -----------------------------------------------------------------------------


def host_manifest(root: Path) -> Manifest:
    """The manifest of ``root`` computed on the host."""
    raw: dict[bytes, tuple[Entry, int]] = {}
    for rel, path, st in _walk(os.fsencode(root)):
        raw[rel] = (_host_entry(path, st), st.st_ino)
    return _link_groups(raw)


def _walk(root: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    """(relative path, absolute path, lstat) of root and everything below, no symlink follow."""
    stack = [(b".", root)]
    while stack:
        rel, path = stack.pop()
        st = os.lstat(path)
        yield rel, path, st
        if stat.S_ISDIR(st.st_mode):
            for name in os.listdir(path):
                child_rel = name if rel == b"." else rel + b"/" + name
                stack.append((child_rel, os.path.join(path, name)))


def _host_entry(path: bytes, st: os.stat_result) -> Entry:
    kind = _TYPE_CHARS[stat.S_IFMT(st.st_mode)]
    is_dev = kind in ("c", "b")
    xattrs = tuple(sorted(
        (name.encode(), os.getxattr(path, name, follow_symlinks=False))
        for name in os.listxattr(path, follow_symlinks=False)
    ))
    digest, sampled = _hash_file(path, st.st_size) if kind == "f" else (None, False)
    return Entry(
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=st.st_size if kind in ("f", "l") else None,
        nlink=st.st_nlink if kind != "d" else None,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if is_dev else None,
        target=os.readlink(path) if kind == "l" else None,
        xattrs=xattrs,
        sha256=digest,
        sampled=sampled,
    )


_TYPE_CHARS: Final = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l",
                      stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p",
                      stat.S_IFSOCK: "s"}


def sampled_ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) windows hashed for a file of ``size`` bytes; must match vmtool.c."""
    if size <= SAMPLE_THRESHOLD:
        return [(0, size)]
    ranges = [(off, min(SAMPLE_LEN, size - off)) for off in range(0, size, SAMPLE_STRIDE)]
    return [*ranges, (size - SAMPLE_LEN, SAMPLE_LEN)]


def _hash_file(path: bytes, size: int) -> tuple[str, bool]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for offset, length in sampled_ranges(size):
            f.seek(offset)
            data = f.read(length)
            if len(data) != length:
                raise OSError(f"{path!r} shorter than its size")
            h.update(data)
    return h.hexdigest(), size > SAMPLE_THRESHOLD


def _link_groups(raw: dict[bytes, tuple[Entry, int]]) -> Manifest:
    """Replace inode numbers by hard-link identity (smallest path sharing the inode)."""
    first: dict[int, bytes] = {}
    for rel in sorted(raw):
        entry, ino = raw[rel]
        if entry.type != "d" and (entry.nlink or 0) > 1:
            first.setdefault(ino, rel)
    out: Manifest = {}
    for rel, (entry, ino) in raw.items():
        group = first.get(ino) if entry.type != "d" and (entry.nlink or 0) > 1 else None
        out[rel] = dataclasses.replace(entry, link_group=group)
    return out


def guest_manifest_script(mount_point: str = "/mnt") -> str:
    """Guest shell lines printing the manifest of ``mount_point`` (parse with parse_manifest)."""
    return f"vmtool manifest {mount_point}\n"


def parse_manifest(text: bytes) -> Manifest:
    """Parse ``vmtool manifest`` output (see vmtool.c for the format)."""
    raw: dict[bytes, tuple[Entry, int]] = {}
    for line in text.splitlines():
        path, *fields = line.split(b"\t")
        kv = dict(f.split(b"=", 1) for f in fields)
        raw[_unescape(path)] = (_parse_entry(kv), int(kv[b"ino"]))
    return _link_groups(raw)


def _parse_entry(kv: dict[bytes, bytes]) -> Entry:
    def opt_int(key: bytes) -> int | None:
        return int(kv[key]) if key in kv else None

    sec, _, nsec = kv[b"mtime"].partition(b".")
    rdev = None
    if b"rdev" in kv:
        major, minor = kv[b"rdev"].split(b":")
        rdev = (int(major), int(minor))
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    if b"xattrs" in kv:
        pairs = (item.split(b":") for item in kv[b"xattrs"].split(b","))
        xattrs = tuple(sorted((_unescape(n), bytes.fromhex(v.decode())) for n, v in pairs))
    digest = kv.get(b"sha256s", kv.get(b"sha256"))
    return Entry(
        type=kv[b"type"].decode(),
        mode=int(kv[b"mode"], 8),
        uid=int(kv[b"uid"]),
        gid=int(kv[b"gid"]),
        mtime_ns=int(sec) * 1_000_000_000 + int(nsec),
        size=opt_int(b"size"),
        nlink=opt_int(b"nlink"),
        rdev=rdev,
        target=_unescape(kv[b"target"]) if b"target" in kv else None,
        xattrs=xattrs,
        sha256=digest.decode() if digest is not None else None,
        sampled=b"sha256s" in kv,
    )


def _unescape(data: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == 0x5C:  # backslash: always \xHH
            out.append(int(data[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def escape(path: bytes) -> str:
    """Printable form of a path, as vmtool prints it (for messages)."""
    return "".join(chr(c) if 0x20 < c < 0x7F and c not in _ESCAPED else f"\\x{c:02x}"
                   for c in path)


def diff_manifests(expected: Manifest, actual: Manifest, limit: int = 40) -> str:
    """Human-readable differences (empty string if equal); at most ``limit`` lines."""
    lines: list[str] = []
    for path in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(path), actual.get(path)
        if want == got:
            continue
        if want is None or got is None:
            lines.append(f"{escape(path)}: {'missing' if got is None else 'unexpected'}")
            continue
        for field in dataclasses.fields(Entry):
            a, b = getattr(want, field.name), getattr(got, field.name)
            if a != b:
                lines.append(f"{escape(path)}: {field.name} expected {a!r}, got {b!r}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... {len(lines) - limit} more"]
    return "\n".join(lines)
