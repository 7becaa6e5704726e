"""DirStream: a listing read in runs, resumed by cookie, whichever way it is read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vhostfs.fs.dirstream import READ_AHEAD, DirStream
from vhostfs.fuse.filesystem import DirEntry

COUNT = 3 * READ_AHEAD + 5  # more than one read-ahead run, not a multiple of it


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[DirStream]:
    for i in range(COUNT):
        (tmp_path / f"n{i:03}").touch()
    listing = DirStream(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), 1, 1)
    yield listing
    listing.close()


def _names(entries: list[DirEntry]) -> list[bytes]:
    return [d.name for d in entries]


def test_take_in_pieces_lists_everything_once_with_consecutive_cookies(
    stream: DirStream,
) -> None:
    seen: list[DirEntry] = []
    offset = 0
    while piece := stream.take(offset, 7)[:5]:  # the guest sends fewer than were taken
        seen += piece
        offset = piece[-1].offset
    assert [d.offset for d in seen] == list(range(1, COUNT + 3))
    assert _names(seen)[:2] == [b".", b".."]
    assert sorted(_names(seen)[2:]) == sorted(f"n{i:03}".encode() for i in range(COUNT))


def test_lazy_and_taken_readers_agree(stream: DirStream) -> None:
    lazy = list(stream.entries(0))
    assert len(lazy) == COUNT + 2
    assert stream.take(0, COUNT + 10) == lazy  # a rewind reads the host again
    assert list(stream.entries(10)) == lazy[10:]  # resumed inside the window
    # A cookie before the window restarts and skips, in runs of READ_AHEAD at most.
    far = READ_AHEAD + 3
    assert stream.take(far, 4) == lazy[far : far + 4]
    assert stream.take(3, 2) == lazy[3:5]


def test_take_past_the_end_is_empty(stream: DirStream) -> None:
    assert stream.take(COUNT + 2, 5) == []
    assert stream.take(COUNT + 50, 5) == []
