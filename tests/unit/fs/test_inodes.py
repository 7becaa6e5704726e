from __future__ import annotations

import errno

import pytest

from vhostfs.errors import FsError
from vhostfs.fs.inodes import HandleTable, InodeTable
from vhostfs.fuse.filesystem import ROOT_INO, FileHandle, Ino


def test_ref_counts_and_forget() -> None:
    table: InodeTable[str, str] = InodeTable("root", "R")
    a, va = table.ref("a", lambda: "A")
    again, _ = table.ref("a", lambda: "never")
    assert a == again and va == "A" and table.lookups(a) == 2
    assert table.forget(a, 1) is None and table.get(a) == "A"
    assert table.forget(a, 1) == "A"
    with pytest.raises(FsError) as info:
        table.get(a)
    assert info.value.errno == errno.ESTALE
    assert table.find("a") is None


def test_ids_are_not_reused_and_root_is_pinned() -> None:
    table: InodeTable[str, str] = InodeTable("root", "R")
    a, _ = table.ref("a", lambda: "A")
    table.forget(a, 1)
    b, _ = table.ref("a", lambda: "A2")
    assert b != a
    assert table.ref("root", lambda: "x") == (ROOT_INO, "R")
    assert table.forget(ROOT_INO, 100) is None and table.get(ROOT_INO) == "R"
    assert table.clear() == ["A2"] and len(table) == 1


def test_forget_unknown_is_ignored() -> None:
    table: InodeTable[str, str] = InodeTable("root", "R")
    assert table.forget(Ino(12345), 1) is None


def test_handles() -> None:
    handles: HandleTable[str] = HandleTable()
    fh = handles.add("x")
    assert handles.get(fh) == "x" and handles.pop(fh) == "x"
    with pytest.raises(FsError) as info:
        handles.pop(fh)
    assert info.value.errno == errno.EBADF
    assert handles.add("y") != fh
    assert handles.clear() == ["y"] and len(handles) == 0
    with pytest.raises(FsError):
        handles.get(FileHandle(99))


def test_detach_lets_a_reused_key_make_a_new_node() -> None:
    table: InodeTable[str, str] = InodeTable("root", "R")
    old, _ = table.ref("k", lambda: "old")
    table.detach("k")
    assert table.find("k") is None and table.get(old) == "old"  # still held by the guest
    new, value = table.ref("k", lambda: "new")
    assert new != old and value == "new"
    assert table.forget(old, 1) == "old"
    assert table.find("k") == new  # forgetting the detached node leaves the new one
    table.detach("root")
    assert table.find("root") == ROOT_INO
