"""A tiny RAFS v6 writer for tests: features the upstream fixtures lack.

Multi-block directories, xattrs, compact inodes, hardlinks (shared nid), holes, devices and
large trees. One blob with raw (uncompressed) chunks; SHA-256 digests; a bootstrap chunk
table. Layout follows rafs-format §4 in its simplest legal form: directories flat plain,
symlinks flat inline, regular files chunk based.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass, field

from rafs.v5.layout import ChunkRecord
from rafs.v6 import layout as L

BLOCK = 4096
CHUNK = 4096  # small chunks so that multi-chunk files stay small
META_BLKADDR = 2  # block 1 holds the blob table


@dataclass(eq=False)
class Node:
    mode: int
    data: bytes = b""  # file content or symlink target
    children: dict[bytes, Node] = field(default_factory=dict)
    xattrs: dict[tuple[int, bytes], bytes] = field(default_factory=dict)
    compact: bool = False
    holes: frozenset[int] = frozenset()  # chunk indexes stored as holes
    rdev: int = 0
    nid: int = 0
    nlink: int = 1


def d(children: dict[bytes, Node], **kw: object) -> Node:
    return Node(stat.S_IFDIR | 0o755, children=children, **kw)  # type: ignore[arg-type]


def f(data: bytes, **kw: object) -> Node:
    return Node(stat.S_IFREG | 0o644, data=data, **kw)  # type: ignore[arg-type]


def link(target: bytes) -> Node:
    return Node(stat.S_IFLNK | 0o777, data=target)


def _xattr_area(node: Node) -> bytes:
    if not node.xattrs:
        return b""
    body = b"".join(_pad(L.XattrEntry(len(n), i, len(v)).pack() + n + v, 4)
                    for (i, n), v in sorted(node.xattrs.items()))
    return L.XattrHeader(0, 0).pack() + body


def _pad(data: bytes, to: int) -> bytes:
    return data + bytes(-len(data) % to)


def _dir_blocks(node: Node, parent: Node) -> list[bytes]:
    names = sorted([(b".", node), (b"..", parent), *node.children.items()])
    blocks: list[list[tuple[bytes, Node]]] = [[]]
    used = 0
    for name, child in names:
        if used + 12 + len(name) > BLOCK:
            blocks.append([])
            used = 0
        blocks[-1].append((name, child))
        used += 12 + len(name)
    out = []
    for entries in blocks:
        nameoff = 12 * len(entries)
        dirents, names_blob = b"", b""
        for name, child in entries:
            ftype = {stat.S_IFDIR: 2, stat.S_IFREG: 1, stat.S_IFLNK: 7}.get(
                stat.S_IFMT(child.mode), 3)
            dirents += L.Dirent(child.nid, nameoff + len(names_blob), ftype).pack()
            names_blob += name
        out.append(dirents + names_blob)
    return out


def build(root: Node) -> tuple[bytes, bytes]:
    """(bootstrap, blob) for the tree under `root`."""
    order: list[tuple[Node, Node]] = []  # (node, parent) with each node once
    seen: set[int] = set()
    queue = [(root, root)]
    while queue:
        node, parent = queue.pop(0)
        if id(node) in seen:
            node.nlink += 1
            continue
        seen.add(id(node))
        order.append((node, parent))
        queue.extend((c, node) for _, c in sorted(node.children.items()))
    for node, _ in order:
        if stat.S_ISDIR(node.mode):
            node.nlink = 2 + sum(stat.S_ISDIR(c.mode) for c in node.children.values())
    # inode records: sizes first, then nids (32-byte slots, not crossing blocks)
    base = META_BLKADDR * BLOCK
    cursor = BLOCK  # relative to the meta area; nid 128 = first inode
    sizes = {}
    for node, _ in order:
        isize = 32 if node.compact else 64
        extra = len(_xattr_area(node))
        if stat.S_ISLNK(node.mode):
            extra += len(node.data)
        elif stat.S_ISREG(node.mode):
            extra = -(-(isize + extra) // 8) * 8 - isize + 8 * -(-len(node.data) // CHUNK)
        size = -(-(isize + extra) // 32) * 32
        if cursor // BLOCK != (cursor + size - 1) // BLOCK:
            cursor = -(-cursor // BLOCK) * BLOCK
        node.nid, sizes[id(node)] = cursor // 32, size
        cursor += size
    data_block = base // BLOCK + -(-cursor // BLOCK)
    meta = bytearray(-(-cursor // BLOCK) * BLOCK)
    dir_data: list[bytes] = []
    blob = bytearray()
    chunks: list[ChunkRecord] = []
    for node, parent in order:
        area = _xattr_area(node)
        icount = (len(area) - 12) // 4 + 1 if area else 0
        fmt_layout, i_u, tail = 0, 0, b""
        size = len(node.data)
        if stat.S_ISDIR(node.mode):
            blocks = _dir_blocks(node, parent)
            size = BLOCK * (len(blocks) - 1) + len(blocks[-1])
            i_u = data_block + len(dir_data)
            dir_data.extend(_pad(b, BLOCK) for b in blocks)
        elif stat.S_ISLNK(node.mode):
            fmt_layout, tail = 2, node.data
        elif stat.S_ISREG(node.mode):
            fmt_layout, i_u = 4, L.CHUNK_FORMAT_INDEXES | (CHUNK.bit_length() - 13)
            tail = _file_chunks(node, blob, chunks)
        else:
            i_u = node.rdev
        fmt = (fmt_layout << 1) | (0 if node.compact else 1)
        if node.compact:
            head = L.CompactInode(fmt, icount, node.mode, node.nlink, size, i_u, node.nid,
                                  1000, 1000).pack()
        else:
            head = L.ExtendedInode(fmt, icount, node.mode, size, i_u, node.nid, 70000, 70000,
                                   1700000000, 5, node.nlink).pack()
        record = head + area
        if stat.S_ISREG(node.mode):
            record = _pad(record, 8)
        record += tail
        meta[node.nid * 32:node.nid * 32 + len(record)] = record
    table = b"".join(c.pack() for c in sorted(chunks, key=lambda c: c.digest))
    body = bytes(meta) + b"".join(dir_data)
    chunk_table_offset = base + len(body)
    bootstrap = bytearray(_pad(bytes(base) + body + table, BLOCK))
    blob_id = hashlib.sha256(bytes(blob)).hexdigest().encode()
    L.ErofsSuperBlock(L.EROFS_MAGIC, 0, L.FEATURE_COMPAT_RAFS_V6, 12, 0, root.nid,
                      len(order), 0, 0, len(blob) // BLOCK, META_BLKADDR, 0, b"", b"", 0xC, 0,
                      1, 11).pack_into(bootstrap, 1024)
    L.ExtSuperBlock(0x1 | 0x8 | 0x10, BLOCK, 256, CHUNK, chunk_table_offset, len(table), 0, 0,
                    0).pack_into(bootstrap, 1152)
    L.DeviceSlot(blob_id, len(blob) // BLOCK, 0).pack_into(bootstrap, 1408)
    L.BlobTableEntryV6(blob_id, 0, CHUNK, len(chunks), 0, 1, 1, len(blob), len(blob), 0, 0,
                       len(blob), 16 * len(chunks), 16 * len(chunks), b"", b"", 0, 0,
                       0).pack_into(bootstrap, BLOCK)
    return bytes(bootstrap), bytes(blob)


def _file_chunks(node: Node, blob: bytearray, chunks: list[ChunkRecord]) -> bytes:
    indexes = b""
    for i in range(0, len(node.data), CHUNK):
        piece = node.data[i:i + CHUNK]
        if i // CHUNK in node.holes:
            indexes += L.ChunkIndex(0, 0, L.NULL_ADDR).pack()
            continue
        offset = len(blob)
        blob += _pad(piece, BLOCK)
        ci = len(chunks)
        chunks.append(ChunkRecord(hashlib.sha256(piece).digest(), 0, 0, len(piece), len(piece),
                                  offset, offset, 0, ci, 0))
        indexes += L.ChunkIndex(ci & 0xFFFF, 1 | ((ci >> 16) << 8), offset // BLOCK).pack()
    return indexes
