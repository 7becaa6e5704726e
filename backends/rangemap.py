"""nydusd's persistent chunk map, as pure functions over bytes (nydusd-interface §5).

File `<blob_id>.blob.data.chunk_map`: a 4096-byte header, then a bitmap with one bit per
chunk of the blob, `ceil(chunks / 8)` bytes. Chunk i is bit `0x80 >> (i & 7)` of byte
`i >> 3` (most significant bit first). Header, little-endian u32s:

    0  magic      0x424D4150
    4  version    1
    8  magic2     0x434D4150
    12 all_ready  0x4D4D4150 once every chunk is present, else 0
    16 zero up to 4096

Invariant the cache keeps: a bit is set only after the chunk's bytes are durable in the
data file, so a map that survives a crash never vouches for missing data. This module does
no I/O; `backends.cachefile` maps the file and calls these.

Also here: `merge_runs`, the pure grouping of sorted byte ranges into backend requests.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final, TypeVar

HEADER_SIZE: Final = 4096
MAGIC: Final = 0x424D4150
VERSION: Final = 1
MAGIC2: Final = 0x434D4150
ALL_READY: Final = 0x4D4D4150
_HEADER: Final = struct.Struct("<IIII")

T = TypeVar("T")


def bitmap_size(chunk_count: int) -> int:
    """Bytes of bitmap for `chunk_count` chunks."""
    return (chunk_count + 7) // 8


def file_size(chunk_count: int) -> int:
    """Size of a chunk map file for `chunk_count` chunks."""
    return HEADER_SIZE + bitmap_size(chunk_count)


def encode_header(all_ready: bool) -> bytes:
    """A full 4096-byte header."""
    fields = _HEADER.pack(MAGIC, VERSION, MAGIC2, ALL_READY if all_ready else 0)
    return fields + bytes(HEADER_SIZE - len(fields))


def decode_header(data: bytes | memoryview) -> bool | None:
    """The all-ready flag of a valid header, or None if the header is not a chunk map's.

    Unknown all-ready values and non-zero padding make the header invalid: the cache then
    rebuilds the map from scratch instead of trusting a file it does not understand.
    """
    if len(data) < HEADER_SIZE:
        return None
    magic, version, magic2, ready = _HEADER.unpack_from(data, 0)
    if (magic, version, magic2) != (MAGIC, VERSION, MAGIC2) or ready not in (0, ALL_READY):
        return None
    if any(data[_HEADER.size:HEADER_SIZE]):
        return None
    return bool(ready == ALL_READY)


def bit_position(index: int) -> tuple[int, int]:
    """(byte offset inside the bitmap, mask) of chunk `index`."""
    return index >> 3, 0x80 >> (index & 7)


def is_set(bitmap: bytes | bytearray | memoryview, index: int) -> bool:
    byte, mask = bit_position(index)
    return bool(bitmap[byte] & mask)


def set_bits(bitmap: bytearray | memoryview, indices: Iterable[int]) -> None:
    for index in indices:
        byte, mask = bit_position(index)
        bitmap[byte] |= mask


def clear_bits(bitmap: bytearray | memoryview, indices: Iterable[int]) -> None:
    for index in indices:
        byte, mask = bit_position(index)
        bitmap[byte] &= ~mask & 0xFF


def all_set(bitmap: bytes | bytearray | memoryview, chunk_count: int) -> bool:
    """Whether bits 0..chunk_count-1 are all set (padding bits are ignored)."""
    full, rest = divmod(chunk_count, 8)
    view = memoryview(bitmap)
    if view[:full].tobytes().count(0xFF) != full:
        return False
    return rest == 0 or (view[full] & (0xFF << (8 - rest)) & 0xFF) == (0xFF << (8 - rest)) & 0xFF


def count_set(bitmap: bytes | bytearray | memoryview, chunk_count: int) -> int:
    return sum(is_set(bitmap, i) for i in range(chunk_count))


def merge_runs(items: Sequence[T], start: Sequence[int], end: Sequence[int], *,
               max_gap: int, max_size: int) -> list[list[T]]:
    """Group `items` (sorted by `start`) into runs one request can fetch.

    Item k occupies bytes [start[k], end[k]). A run grows while the next item begins at most
    `max_gap` bytes after the run's end and the run stays within `max_size` bytes; an item
    larger than `max_size` still forms a run of its own.
    """
    runs: list[list[T]] = []
    run_start = run_end = 0
    for k, item in enumerate(items):
        if runs and start[k] <= run_end + max_gap and max(run_end, end[k]) - run_start <= max_size:
            runs[-1].append(item)
            run_end = max(run_end, end[k])
            continue
        runs.append([item])
        run_start, run_end = start[k], end[k]
    return runs
