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

import struct
from collections.abc import Sequence
from typing import Any

from vhostfs.errors import ChainError
from vhostfs.virtio.guestbufs import GuestBuffers, split_views


class ChainReader:
    """Consumes the device-readable bytes of a chain in order."""

    __slots__ = ("_bufs", "_index", "_offset", "remaining")

    def __init__(self, bufs: list[memoryview]) -> None:
        self._bufs = bufs
        self._index = 0  # buffer holding the next unread byte
        self._offset = 0  # position inside that buffer
        self.remaining = sum(map(len, bufs))

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or ChainError if the readable part is shorter."""
        if size > self.remaining or size < 0:
            raise ChainError(f"request needs {size} bytes, {self.remaining} readable")
        return bytes(self._take(size)) if size else b""

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        """The next `layout.size` bytes, decoded (ChainError if fewer are readable).

        A header or an argument block inside one descriptor (the common case) is decoded in
        place, without the slice and the copy that `read` makes.
        """
        size = layout.size
        if size > self.remaining:
            raise ChainError(f"request needs {size} bytes, {self.remaining} readable")
        buf = self._bufs[self._index]
        start = self._offset
        end = start + size
        if end > len(buf):
            return layout.unpack(self.read(size))
        values = layout.unpack_from(buf, start)
        # `_consume`'s bookkeeping, inline: this runs twice per request and a call costs more
        # than the four lines (the slice `_consume` makes is what this path avoids).
        self.remaining -= size
        if end == len(buf):
            self._index += 1
            self._offset = 0
        else:
            self._offset = end
        return values

    def views(self, size: int) -> list[memoryview]:
        """The next `size` readable bytes as guest-memory slices, consumed (zero-copy)."""
        if size > self.remaining or size < 0:
            raise ChainError(f"request needs {size} bytes, {self.remaining} readable")
        out: list[memoryview] = []
        while size:
            buf = self._bufs[self._index]
            take = min(len(buf) - self._offset, size)
            out.append(self._consume(buf, take))
            size -= take
        return out

    def _take(self, size: int) -> memoryview | bytes:
        buf = self._bufs[self._index]
        if self._offset + size <= len(buf):
            # The common case: a FUSE header or its arguments sit in one descriptor.
            return self._consume(buf, size)
        return b"".join(self.views(size))

    def _consume(self, buf: memoryview, size: int) -> memoryview:
        start = self._offset
        end = start + size
        self.remaining -= size
        if end == len(buf):
            self._index += 1
            self._offset = 0
        else:
            self._offset = end
        return buf[start:end]


class ChainWriter:
    """Fills the device-writable bytes of a chain; `written` becomes the used length.

    The buffers are views, or a GuestBuffers (a many-page READ reply: addresses, views made
    on demand) which `views` hands on as it is, so preadv fills it without any view.
    """

    __slots__ = ("_bufs", "_lens", "capacity", "written")

    def __init__(self, bufs: list[memoryview] | GuestBuffers) -> None:
        self._bufs = bufs
        self._lens = bufs.lens if type(bufs) is GuestBuffers else list(map(len, bufs))
        self.capacity = sum(self._lens)
        self.written = 0  # high-water mark of bytes written from the start

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at stream offset `offset`; ChainError if it does not fit."""
        size = len(data)
        end = offset + size
        if offset < 0 or end > self.capacity:
            raise ChainError(f"reply of {end} bytes exceeds the {self.capacity} writable")
        index, local = self._locate(offset) if offset else (0, 0)
        buf = self._bufs[index]
        room = len(buf) - local
        if size <= room:
            # The common case: the out header, or a reply body in its own descriptor.
            buf[local : local + size] = data
        else:
            # Header and body written at once over the guest's two descriptors (every
            # LOOKUP or GETATTR reply of a Linux guest): piece by piece, ending at `size`.
            if type(data) is memoryview and data.format != "B":
                data = data.cast("B")
            bufs = self._bufs
            pos = 0
            while size - pos > room:
                buf[local:] = data[pos : pos + room]
                pos += room
                index += 1
                local = 0
                buf = bufs[index]
                room = len(buf)
            buf[local : local + size - pos] = data[pos:]
        if end > self.written:
            self.written = end

    def views(self, offset: int, size: int) -> Sequence[memoryview]:
        """Guest-memory slices for stream bytes [offset, offset + size), for zero-copy fills.

        The caller reports how much it filled with `commit`.
        """
        if offset < 0 or size < 0 or offset + size > self.capacity:
            raise ChainError(f"reply of {offset + size} bytes exceeds the {self.capacity}")
        index, local = self._locate(offset)
        bufs = self._bufs
        if local == 0 and offset + size == self.capacity:
            return bufs[index:]  # the rest of the chain: a READ reply's pages
        if type(bufs) is GuestBuffers:
            return bufs[index:].span(local, size)
        if index == 0 and local == 0:
            return split_views(bufs, 0, size)
        return split_views(bufs[index:], local, size)

    def commit(self, end: int) -> None:
        """Record that the stream is filled up to `end` (after writing into `views`)."""
        if end > self.capacity:
            raise ChainError(f"reply of {end} bytes exceeds the {self.capacity} writable")
        if end > self.written:
            self.written = end

    def _locate(self, offset: int) -> tuple[int, int]:
        """(buffer index, offset inside it) of stream byte `offset`.

        Replies are written at the start of the chain (the header, then the body right after
        it), so a walk from the first buffer takes a step or two; no table of buffer offsets
        is built for the 257 buffers of a 1 MiB READ.
        """
        lens = self._lens
        last = len(lens) - 1
        index = 0
        while index < last and offset >= lens[index]:
            offset -= lens[index]
            index += 1
        return index, offset
