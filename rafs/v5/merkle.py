"""The RAFS v5 inode digest tree ("merkle tree", rafs-format §3.11).

Each record's `i_digest` is H over its content: a regular file's chunk digests in file order,
a symlink's target, a directory's children's `i_digest` in index order; any other inode
(and an empty file or directory) digests the empty string. Names, modes and times are not
covered.

Checking each record against its children's *stored* digests, once, proves the whole tree
by induction, so the check is a single pass over the inode table: no recursion, no
visited set, and a hostile bootstrap cannot make it loop.
"""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

from ..algorithms import digest
from ..errors import DigestMismatch

if TYPE_CHECKING:
    from .bootstrap import InodeRecord, V5Bootstrap


def expected_digest(bootstrap: V5Bootstrap, record: InodeRecord) -> bytes:
    """H of what `record` covers, from its own data and its children's stored digests."""
    head = record.head
    if stat.S_ISREG(head.mode):
        parts = [bootstrap.chunk(record, i).digest for i in range(head.child_count)]
    elif stat.S_ISLNK(head.mode):
        parts = [bootstrap.symlink_target(record)]
    elif stat.S_ISDIR(head.mode):
        parts = [bootstrap.record(head.child_index + i).head.digest
                 for i in range(head.child_count)]
    else:
        parts = []
    return digest(bootstrap.digester, b"".join(parts))


def verify_tree(bootstrap: V5Bootstrap) -> bytes:
    """Check every record's digest; return the root's. Raises DigestMismatch."""
    for index in range(1, bootstrap.index_count + 1):
        record = bootstrap.record(index)
        expected = expected_digest(bootstrap, record)
        if expected != record.head.digest:
            raise DigestMismatch(f"v5 inode index {index} (ino {record.head.ino}) at offset "
                                 f"{record.offset}: digest {record.head.digest.hex()} != "
                                 f"computed {expected.hex()}")
    return bootstrap.record(1).head.digest
