"""A host directory listing behind one OPENDIR handle, resumable by cookie in O(1).

The guest reads a directory in buffer-sized pieces and resumes each with the cookie
(`DirEntry.offset`) of the last entry it received. Cookies here are positions in the
listing: "." is 0, ".." is 1, then the host entries in scandir order, and an entry's cookie
is its position + 1. The stream keeps the scandir iterator open between requests plus a
small window of entries it produced but the guest may not have received yet (the server
pulls more than fit). Resuming at the window is O(1); cookie 0 (rewinddir) restarts the
listing from the host; any other cookie before the window restarts and skips (O(n), never
done by Linux in practice). Memory stays bounded by one reply's worth of entries plus a
read-ahead of READ_AHEAD, so a 100k-entry directory costs O(n) in total, not O(n^2).

Entries are read from the host in runs (`_fill`), not one generator step at a time: a
READDIRPLUS of 4 KiB takes its ~25 entries as one list (`take`), which saved ~1 us an entry.

The stream owns its directory fd and the dup that scandir makes; `close` releases both.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Generator, Iterator

from vhostfs.fuse.filesystem import DirEntry, from_fields

# Entries read from the host at a time for a lazy reader (`entries`).
READ_AHEAD = 32
DT_DIR = stat.S_IFDIR >> 12
DT_REG = stat.S_IFREG >> 12
DT_LNK = stat.S_IFLNK >> 12
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def dirent_type(entry: os.DirEntry[str]) -> int:
    """DT_* of a scandir entry without following symlinks (d_type, else lstat)."""
    # Most common first: one call for a regular file (a listing costs ~1 us per call).
    if entry.is_file(follow_symlinks=False):
        return DT_REG
    if entry.is_dir(follow_symlinks=False):
        return DT_DIR
    if entry.is_symlink():
        return DT_LNK
    try:
        return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode) >> 12
    except OSError:
        return 0  # DT_UNKNOWN: raced away; the guest will find out on lookup


class DirStream:
    """Entries of one open directory (see the module docstring)."""

    def __init__(self, fd: int, dot_ino: int, dotdot_ino: int) -> None:
        self.fd = fd  # owned: O_RDONLY | O_DIRECTORY
        self._dots = (DirEntry(dot_ino, b".", DT_DIR, 1), DirEntry(dotdot_ino, b"..", DT_DIR, 2))
        self._it: Iterator[os.DirEntry[str]] | None = None
        self._produced = 0  # position of the next entry the host iterator yields
        self._base = 0  # position of window[0]
        self._window: list[DirEntry] = []

    def entries(self, offset: int) -> Generator[DirEntry, None, None]:
        """Entries from cookie `offset` on; iterate lazily, stop whenever you like."""
        self._seek(offset)
        return self._generate()

    def take(self, offset: int, count: int) -> list[DirEntry]:
        """Up to `count` entries from cookie `offset` on (fewer at the end of the listing).

        Those the caller does not send stay in the window for its next request.
        """
        self._seek(offset)
        self._fill(count)
        return self._window[:count]

    def _seek(self, offset: int) -> None:
        if offset < self._base or (offset == 0 and self._produced > 0):
            self._restart()
        if offset < self._base + len(self._window):
            del self._window[: offset - self._base]
        else:
            self._window.clear()
            self._skip_to(offset)
        self._base = offset

    def _generate(self) -> Generator[DirEntry, None, None]:
        window = self._window
        sent = 0
        while sent < len(window) or self._fill(sent + READ_AHEAD):
            yield window[sent]
            sent += 1

    def _fill(self, count: int) -> bool:
        """Read host entries until the window holds `count`; whether it holds more than before."""
        window = self._window
        before = len(window)
        while self._produced < 2 and len(window) < count:
            window.append(self._dots[self._produced])
            self._produced += 1
        if len(window) >= count:
            return len(window) > before
        if self._it is None:
            self._it = os.scandir(self.fd)
        pos = self._produced
        append = window.append
        try:
            for host in self._it:
                pos += 1
                name = host.name.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode minus checks
                append(from_fields(DirEntry, (host.inode(), name, dirent_type(host), pos)))
                if len(window) >= count:
                    break
        finally:
            self._produced = pos
        return len(window) > before

    def _skip_to(self, offset: int) -> None:
        while self._produced < offset:
            self._window.clear()
            if not self._fill(min(offset - self._produced, READ_AHEAD)):
                break
        self._window.clear()

    def _restart(self) -> None:
        self._close_iterator()
        os.lseek(self.fd, 0, os.SEEK_SET)
        self._produced = self._base = 0
        self._window.clear()

    def _close_iterator(self) -> None:
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()
            self._it = None

    def close(self) -> None:
        self._close_iterator()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
