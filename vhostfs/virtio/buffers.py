"""Readers and writers over the guest buffers of one descriptor chain.

A virtio request is a chain of descriptors: device-readable buffers first, device-writable
ones after. Where the driver splits its bytes between descriptors is its own choice, so the
FUSE server sees the readable part as one byte stream (`ChainReader`) and the writable part
as one output stream (`ChainWriter`), never individual descriptors.

Both work on lists of memoryviews that already point into mapped guest memory (the chain
walk in `chain.py` translated and bounds-checked every address), so file data can move
between guest memory and the kernel with no Python copy: `ChainWriter.views` hands slices to
`os.preadv`, `ChainReader.views` hands slices to `os.pwritev`.

Invariants: a reader never returns bytes past the readable part, a writer never writes past
the writable part; both raise ChainError instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from vhostfs.errors import ChainError


def split_views(bufs: Sequence[memoryview], offset: int, size: int) -> list[memoryview]:
    """The slices of `bufs` that cover the stream bytes [offset, offset + size)."""
    out: list[memoryview] = []
    for buf in bufs:
        n = len(buf)
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, size)
        out.append(buf[offset : offset + take])
        size -= take
        offset = 0
        if not size:
            break
    return out


class ChainReader:
    """Consumes the device-readable bytes of a chain in order."""

    __slots__ = ("_bufs", "_pos", "remaining")

    def __init__(self, bufs: list[memoryview]) -> None:
        self._bufs = bufs
        self._pos = 0  # stream position
        self.remaining = sum(len(b) for b in bufs)

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or ChainError if the readable part is shorter."""
        if size > self.remaining or size < 0:
            raise ChainError(f"request needs {size} bytes, {self.remaining} readable")
        first = self._bufs[0] if self._bufs else None
        if first is not None and self._pos + size <= len(first):
            # Fast path: everything lies in the first buffer (the common FUSE header case).
            data = bytes(first[self._pos : self._pos + size])
        else:
            data = b"".join(split_views(self._bufs, self._pos, size))
        self._pos += size
        self.remaining -= size
        return data

    def views(self, size: int) -> list[memoryview]:
        """The next `size` readable bytes as guest-memory slices, consumed (zero-copy)."""
        if size > self.remaining or size < 0:
            raise ChainError(f"request needs {size} bytes, {self.remaining} readable")
        out = split_views(self._bufs, self._pos, size)
        self._pos += size
        self.remaining -= size
        return out


class ChainWriter:
    """Fills the device-writable bytes of a chain; `written` becomes the used length."""

    __slots__ = ("_bufs", "capacity", "written")

    def __init__(self, bufs: list[memoryview]) -> None:
        self._bufs = bufs
        self.capacity = sum(len(b) for b in bufs)
        self.written = 0  # high-water mark of bytes written from the start

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at stream offset `offset`; ChainError if it does not fit."""
        size = len(data)
        end = offset + size
        if offset < 0 or end > self.capacity:
            raise ChainError(f"reply of {end} bytes exceeds the {self.capacity} writable")
        first = self._bufs[0]
        if end <= len(first):
            first[offset:end] = data
        else:
            src = memoryview(data).cast("B")
            pos = 0
            for view in split_views(self._bufs, offset, size):
                n = len(view)
                view[:] = src[pos : pos + n]
                pos += n
        if end > self.written:
            self.written = end

    def views(self, offset: int, size: int) -> list[memoryview]:
        """Guest-memory slices for stream bytes [offset, offset + size), for zero-copy fills.

        The caller reports how much it filled with `commit`.
        """
        if offset < 0 or offset + size > self.capacity:
            raise ChainError(f"reply of {offset + size} bytes exceeds the {self.capacity}")
        return split_views(self._bufs, offset, size)

    def commit(self, end: int) -> None:
        """Record that the stream is filled up to `end` (after writing into `views`)."""
        if end > self.capacity:
            raise ChainError(f"reply of {end} bytes exceeds the {self.capacity} writable")
        if end > self.written:
            self.written = end
