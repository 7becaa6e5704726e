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
