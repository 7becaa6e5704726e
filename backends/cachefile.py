"""The on-disk files of one cached blob: uncompressed data plus nydusd's chunk map.

Layout in `work_dir` (nydusd-interface §5, same names so nydusd tooling and GC see them):

    <blob_id>.blob.data            uncompressed chunk data at each chunk's uncompressed
                                   offset; sparse; sized to the blob's uncompressed size
    <blob_id>.blob.data.chunk_map  4096-byte header + 1 bit per chunk (`backends.rangemap`)

Durability order (the invariant that makes `kill -9` and power loss harmless): chunk bytes
are written and `fdatasync`ed *before* their bits are set. A crash can therefore lose bits
(the chunk is fetched again) but never leave a bit whose bytes are missing. The map is a
shared mmap: setting a bit is a page-cache store that survives the process dying; two
daemons racing on one byte can at worst drop each other's bit, which again only costs a
refetch.

Recovery: a map of the wrong size or with an unknown header, or a data file larger than
the blob, is not trusted: both are reset and the blob is refetched. (nydusd refuses to
open such a blob; we prefer to heal, since nothing in a reset cache can be served wrong.)

All methods are blocking; the cache calls the slow ones (open, read, write_durable)
through trio.to_thread with its CapacityLimiter. This object owns its two fds and the mmap.
"""

from __future__ import annotations

import mmap
import os
from typing import Final

from . import rangemap
from .errors import CorruptCache, from_os_error

DATA_SUFFIX: Final = ".blob.data"
MAP_SUFFIX: Final = ".blob.data.chunk_map"


class BlobCacheFile:
    """Data file and chunk map of one blob, opened (and repaired) by `open`."""

    def __init__(self, data_fd: int, map_fd: int, bitmap: mmap.mmap, chunk_count: int,
                 data_size: int, name: str, was_reset: bool) -> None:
        self._data_fd = data_fd
        self._map_fd = map_fd
        self._map = bitmap
        self.chunk_count = chunk_count
        self.data_size = data_size  # bytes of the uncompressed blob
        self.name = name  # the data file's base name, for metrics
        self.was_reset = was_reset  # open() discarded an untrustworthy cache
        self.all_ready = rangemap.decode_header(self._map[:rangemap.HEADER_SIZE]) is True

    @classmethod
    def open(cls, work_dir: str, blob_id: str, chunk_count: int,
             data_size: int) -> BlobCacheFile:
        """Open or create the files of `blob_id`, repairing what cannot be trusted."""
        data_path = os.path.join(work_dir, blob_id + DATA_SUFFIX)
        map_path = os.path.join(work_dir, blob_id + MAP_SUFFIX)
        try:
            os.makedirs(work_dir, exist_ok=True)
            data_fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise from_os_error(exc, data_path) from exc
        try:
            map_fd = os.open(map_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            os.close(data_fd)
            raise from_os_error(exc, map_path) from exc
        try:
            reset = _repair(data_fd, map_fd, chunk_count, data_size)
            bitmap = mmap.mmap(map_fd, rangemap.file_size(chunk_count))
        except OSError as exc:
            os.close(data_fd)
            os.close(map_fd)
            raise from_os_error(exc, map_path) from exc
        return cls(data_fd, map_fd, bitmap, chunk_count, data_size,
                   blob_id + DATA_SUFFIX, reset)

    def _bits(self) -> memoryview:
        return memoryview(self._map)[rangemap.HEADER_SIZE:]

    def present(self, index: int) -> bool:
        if self.all_ready:
            return True
        bits = self._bits()
        try:
            return rangemap.is_set(bits, index)
        finally:
            bits.release()

    def count_present(self) -> int:
        bits = self._bits()
        try:
            return rangemap.count_set(bits, self.chunk_count)
        finally:
            bits.release()

    def read(self, offset: int, size: int) -> bytes:
        """Blocking: `size` bytes of uncompressed data at `offset`."""
        try:
            data = os.pread(self._data_fd, size, offset)
        except OSError as exc:
            raise from_os_error(exc, self.name) from exc
        if len(data) != size:
            raise CorruptCache(f"{self.name}: short read at {offset} ({len(data)} of {size})")
        return data

    def write_durable(self, pieces: list[tuple[int, bytes]]) -> None:
        """Blocking: write each (offset, bytes) and make them durable before returning."""
        try:
            for offset, data in pieces:
                if offset + len(data) > self.data_size:
                    raise CorruptCache(f"{self.name}: chunk at {offset}+{len(data)} is past "
                                       f"the blob's uncompressed size {self.data_size}")
                written = os.pwrite(self._data_fd, data, offset)
                if written != len(data):
                    raise CorruptCache(f"{self.name}: short write at {offset}")
            os.fdatasync(self._data_fd)
        except OSError as exc:
            raise from_os_error(exc, self.name) from exc

    def mark_present(self, indices: list[int]) -> None:
        """Set the bits of chunks whose bytes `write_durable` has made durable."""
        bits = self._bits()
        try:
            rangemap.set_bits(bits, indices)
            complete = rangemap.all_set(bits, self.chunk_count)
        finally:
            bits.release()
        if complete and not self.all_ready:
            self._map[:rangemap.HEADER_SIZE] = rangemap.encode_header(all_ready=True)
            self.all_ready = True

    def mark_absent(self, indices: list[int]) -> None:
        """Clear the bits of chunks whose cached bytes turned out to be wrong."""
        if self.all_ready:
            self._map[:rangemap.HEADER_SIZE] = rangemap.encode_header(all_ready=False)
            self.all_ready = False
        bits = self._bits()
        try:
            rangemap.clear_bits(bits, indices)
        finally:
            bits.release()

    def close(self) -> None:
        self._map.close()
        os.close(self._map_fd)
        os.close(self._data_fd)


def _repair(data_fd: int, map_fd: int, chunk_count: int, data_size: int) -> bool:
    """Make both files the right size with a valid header; True if an old cache was reset."""
    expected = rangemap.file_size(chunk_count)
    existed = os.fstat(map_fd).st_size > 0
    map_ok = (os.fstat(map_fd).st_size == expected
              and rangemap.decode_header(os.pread(map_fd, rangemap.HEADER_SIZE, 0))
              is not None)
    data_ok = os.fstat(data_fd).st_size <= data_size
    reset = not (map_ok and data_ok)
    if reset:
        # Clear the map first: if we die in between, no bit vouches for the data file.
        os.ftruncate(map_fd, 0)
        os.pwrite(map_fd, rangemap.encode_header(all_ready=False), 0)
        os.ftruncate(map_fd, expected)
        os.fsync(map_fd)
        os.ftruncate(data_fd, 0)
    if os.fstat(data_fd).st_size != data_size:
        os.ftruncate(data_fd, data_size)
    return reset and existed
