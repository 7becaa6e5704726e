"""Node-id and file-handle tables: what the guest holds, with lookup counts and forget.

FUSE node ids are ours to choose; the guest holds each with a lookup count that LOOKUP (and
READDIRPLUS, CREATE, MKNOD, MKDIR, SYMLINK, LINK) raise by one and FORGET lowers by n. A node
leaves the table when its count reaches zero. Node ids are never reused within a session
(a 64-bit counter), so the generation can stay 0. The root (node id 1) is pinned: the
kernel never counts lookups of it and never forgets it.

Each node is also indexed by a key (for passthrough: the host (st_dev, st_ino)), so the same
host inode reached by two names (hard links) gets the same node id while the guest knows it.

`HandleTable` maps the fh numbers of OPEN/OPENDIR/CREATE replies to open-file objects.

Unknown node ids raise FsError(ESTALE), unknown handles FsError(EBADF). Not thread-safe:
used from the event loop only.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from vhostfs.errors import FsError
from vhostfs.fuse.filesystem import ROOT_INO, FileHandle, Ino

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Slot(Generic[K, V]):
    key: K
    value: V
    lookups: int  # guest references; the root's is never consulted


class InodeTable(Generic[K, V]):
    """Node id -> (key, value) with lookup counts; key -> node id."""

    def __init__(self, root_key: K, root_value: V) -> None:
        self._slots: dict[Ino, _Slot[K, V]] = {}
        self._by_key: dict[K, Ino] = {}
        self._next = ROOT_INO + 1
        self._root = _Slot(root_key, root_value, 1)
        self.clear()

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Ino]:
        return iter(self._slots)

    def get(self, ino: Ino) -> V:
        """The value of a live node; FsError(ESTALE) if the guest names an unknown node."""
        try:
            return self._slots[ino].value
        except KeyError:
            raise FsError(errno.ESTALE, f"unknown node id {ino}") from None

    def key_of(self, ino: Ino) -> K:
        try:
            return self._slots[ino].key
        except KeyError:
            raise FsError(errno.ESTALE, f"unknown node id {ino}") from None

    def find(self, key: K) -> Ino | None:
        return self._by_key.get(key)

    def lookups(self, ino: Ino) -> int:
        slot = self._slots.get(ino)
        return slot.lookups if slot is not None else 0

    def ref_known(self, key: K) -> Ino | None:
        """Count one more guest reference to the node for `key` if there is one."""
        ino = self._by_key.get(key)
        if ino is not None and ino != ROOT_INO:
            self._slots[ino].lookups += 1
        return ino

    def ref(self, key: K, make: Callable[[], V]) -> tuple[Ino, V]:
        """Count one more guest reference to the node for `key`, creating it if needed."""
        ino = self.ref_known(key)
        if ino is not None:
            return ino, self._slots[ino].value
        ino = Ino(self._next)
        self._next += 1
        value = make()
        self._slots[ino] = _Slot(key, value, 1)
        self._by_key[key] = ino
        return ino, value

    def detach(self, key: K) -> None:
        """The object behind `key` is gone (host inode deleted): `key` may name a new one.

        The node itself stays until the guest forgets it (it may still have the file open),
        but a later `ref` of the same key makes a new node instead of resurrecting this one,
        which matters because host inode numbers are reused.
        """
        ino = self._by_key.get(key)
        if ino is not None and ino != ROOT_INO:
            del self._by_key[key]

    def forget(self, ino: Ino, nlookup: int) -> V | None:
        """Drop `nlookup` references; returns the value if the node left the table."""
        slot = self._slots.get(ino)
        if slot is None or ino == ROOT_INO:
            return None
        slot.lookups -= nlookup
        if slot.lookups > 0:
            return None
        del self._slots[ino]
        if self._by_key.get(slot.key) == ino:
            del self._by_key[slot.key]
        return slot.value

    def clear(self) -> list[V]:
        """Forget every node but the root (a session ended); returns the dropped values."""
        dropped = [s.value for i, s in self._slots.items() if i != ROOT_INO]
        self._slots = {ROOT_INO: self._root}
        self._by_key = {self._root.key: ROOT_INO}
        return dropped


class HandleTable(Generic[V]):
    """fh number -> open object. Numbers are never reused within a session."""

    def __init__(self) -> None:
        self._items: dict[FileHandle, V] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._items)

    def add(self, value: V) -> FileHandle:
        fh = FileHandle(self._next)
        self._next += 1
        self._items[fh] = value
        return fh

    def get(self, fh: FileHandle) -> V:
        try:
            return self._items[fh]
        except KeyError:
            raise FsError(errno.EBADF, f"unknown handle {fh}") from None

    def pop(self, fh: FileHandle) -> V:
        try:
            return self._items.pop(fh)
        except KeyError:
            raise FsError(errno.EBADF, f"unknown handle {fh}") from None

    def clear(self) -> list[V]:
        dropped = list(self._items.values())
        self._items.clear()
        return dropped
