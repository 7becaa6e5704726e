"""Guest buffers kept as addresses, not memoryviews: the writable half of a READ request.

A 1 MiB READ from a Linux guest arrives as 256 page-sized buffers. Building a memoryview for
each, then having os.preadv turn each back into a pointer and a length, cost more than the
kernel's copy of the data (about 60 us of the ~250 us our daemon spent on such a request in a
TCG guest). `GuestBuffers` keeps the buffers of one chain as two int columns (guest
addresses, lengths) inside one mapped region, makes a memoryview only when one is asked for,
and fills them from a file with a single preadv(2) over an iovec array packed in one C call.

Safety. Addresses are checked against the region when the chain is walked (chain.py), and
`GuestBuffers` holds its own view of the whole region: while it lives, the mapping cannot be
unmapped (mmap refuses to close with exports), so the raw addresses handed to the kernel
always point into guest memory that is mapped here. The kernel copies at most the lengths
given, so nothing outside the checked ranges is written.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import operator
import os
import struct
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Final, final, overload

# Linux's UIO_MAXIOV: the most iovecs one preadv takes.
IOV_MAX: Final = 1024

_libc = ctypes.CDLL(None, use_errno=True)
_preadv = _libc.preadv
_preadv.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int64]
_preadv.restype = ctypes.c_ssize_t


@lru_cache(maxsize=64)
def _iovec_struct(count: int) -> struct.Struct:
    """`count` struct iovec {void *base; size_t len} packed in one C call."""
    return struct.Struct("@" + "PN" * count)


@final
class GuestBuffers(Sequence[memoryview]):
    """Buffers inside one mapped region of guest memory, in chain order (see module doc).

    Final, so that per-request code tests `type(x) is GuestBuffers`: an isinstance check goes
    through Sequence's ABCMeta and cost ~0.3 us, four times per READ.
    """

    __slots__ = ("_base", "_host", "_iovecs", "_iovecs_at", "_region", "_tails", "gpas", "lens")

    def __init__(
        self,
        region: memoryview,
        base: int,
        host: int,
        gpas: Sequence[int],
        lens: Sequence[int],
    ) -> None:
        self._region = region  # the whole region: keeps the mapping alive while we exist
        self._base = base  # guest-physical address of region[0]
        self._host = host  # our virtual address of region[0]
        self.gpas = gpas  # every [gpa, gpa + len) lies inside the region (checked by the walk)
        self.lens = lens
        # Never changed after construction, so a chain walk may hand the same object to every
        # request that sends the same table (chain.py); these memos then pay off each time.
        self._iovecs: bytes | None = None  # all buffers packed as struct iovec
        self._iovecs_at = 0  # the address of _iovecs' bytes, once asked for
        self._tails: dict[int, GuestBuffers] = {}  # self[k:] by k (a READ reply's pages)

    def __len__(self) -> int:
        return len(self.lens)

    @overload
    def __getitem__(self, index: int) -> memoryview: ...
    @overload
    def __getitem__(self, index: slice) -> GuestBuffers: ...
    def __getitem__(self, index: int | slice) -> memoryview | GuestBuffers:
        if isinstance(index, slice):
            if index.stop is None and index.step is None and isinstance(index.start, int):
                tail = self._tails.get(index.start)
                if tail is None:
                    tail = self._tails[index.start] = self._slice(index)
                return tail
            return self._slice(index)
        start = self.gpas[index] - self._base
        return self._region[start : start + self.lens[index]]

    def _slice(self, index: slice) -> GuestBuffers:
        return GuestBuffers(
            self._region, self._base, self._host, self.gpas[index], self.lens[index]
        )

    def __iter__(self) -> Iterator[memoryview]:
        region, base = self._region, self._base
        for gpa, length in zip(self.gpas, self.lens, strict=True):
            yield region[gpa - base : gpa - base + length]

    @property
    def nbytes(self) -> int:
        return sum(self.lens)

    def span(self, offset: int, size: int) -> GuestBuffers:
        """The buffers covering stream bytes [offset, offset + size), ends trimmed."""
        gpas: list[int] = []
        lens: list[int] = []
        for gpa, length in zip(self.gpas, self.lens, strict=True):
            if offset >= length:
                offset -= length
                continue
            take = min(length - offset, size)
            gpas.append(gpa + offset)
            lens.append(take)
            size -= take
            offset = 0
            if not size:
                break
        return GuestBuffers(self._region, self._base, self._host, gpas, lens)

    def preadv(self, fd: int, offset: int) -> int:
        """Fill the buffers in order from `fd` at `offset`; the count is short only at EOF."""
        wanted = self.nbytes
        done = 0
        while done < wanted:  # every pass reads at least one byte or ends the loop
            rest = self.span(done, wanted - done) if done else self
            count = min(len(rest), IOV_MAX)
            iovecs = rest._packed(count)
            got = _preadv(fd, iovecs, count, offset + done)
            if got < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                raise OSError(code, os.strerror(code))
            if got == 0:
                break
            done += got
        return done

    def iovec_array(self) -> tuple[bytes, int]:
        """Every buffer as a struct iovec array, and its address, for a submission the kernel
        completes later: the caller keeps the bytes (and this object) alive until then."""
        if len(self.lens) > IOV_MAX:
            raise ValueError(f"{len(self.lens)} buffers, more than one read takes")
        packed = self._packed(len(self.lens))
        if not self._iovecs_at:
            # A c_char_p made from bytes points at the bytes' own storage: no copy.
            self._iovecs_at = ctypes.cast(ctypes.c_char_p(packed), ctypes.c_void_p).value or 0
        return packed, self._iovecs_at

    def _packed(self, count: int) -> bytes:
        """The first `count` buffers as an iovec array (all of them: packed once, kept)."""
        if count < len(self.lens):
            return _iovec_struct(count).pack(*self._iovec_fields(count))
        if self._iovecs is None:
            self._iovecs = _iovec_struct(count).pack(*self._iovec_fields(count))
        return self._iovecs

    def _iovec_fields(self, count: int) -> list[int]:
        """[base0, len0, base1, len1, ...] for the first `count` buffers, in C-level steps."""
        fields = [0] * (2 * count)
        fields[0::2] = map(
            operator.add, self.gpas[:count], itertools.repeat(self._host - self._base, count)
        )
        fields[1::2] = self.lens[:count]
        return fields


def preadv_into(fd: int, bufs: Sequence[memoryview], offset: int) -> int:
    """Fill `bufs` in order from `fd` at `offset`; the count is short only at end of file."""
    if type(bufs) is GuestBuffers:
        return bufs.preadv(fd, offset)
    wanted = sum(map(len, bufs))
    done = 0
    while done < wanted:  # every pass reads at least one byte or ends the loop
        views = split_views(bufs, done, wanted - done) if done else bufs
        count = os.preadv(fd, views if len(views) <= IOV_MAX else views[:IOV_MAX], offset + done)
        if count == 0:
            break  # end of file
        done += count
    return done


def split_views(bufs: Sequence[memoryview], offset: int, size: int) -> list[memoryview]:
    """The slices of `bufs` that cover the stream bytes [offset, offset + size)."""
    if offset == 0 and size >= sum(map(len, bufs)):
        return list(bufs)  # whole buffers: a READ reply's pages, the common case
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
