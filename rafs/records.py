"""Fixed-layout binary records: the one mechanism every wire and on-disk struct uses.

A record is a frozen, slotted dataclass whose fields map one to one onto the items of a
`struct` format string given once, at class definition::

    @dataclass(frozen=True, slots=True)
    class InHeader(Record, fmt="<IIQQIIIHH"):
        len: int      # bytes, header included
        opcode: int
        ...

The format string is the single declaration of the layout: `SIZE`, `unpack_from`, `pack`
and `pack_into` are derived from it, so a layout is never written twice. Padding items
(``x``) are allowed and are not fields. Parsers take a buffer and an offset, never a file or
a socket (sans-I/O). A record that can be invalid overrides `validate`, which decoders of
untrusted input call before trusting any field.

Lives in `rafs` because rafs is the lowest package that needs binary records; vhostfs
imports it, never the other way round.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import fields
from typing import Any, ClassVar, Self, TypeAlias

# collections.abc.Buffer arrives only in Python 3.12.
Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap


class RecordError(ValueError):
    """A buffer is too short for the record being decoded."""


class Record:
    """Base class of every fixed-layout record (see the module docstring)."""

    __slots__ = ()

    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]
    _FIELD_NAMES: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, fmt: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if fmt:
            cls.STRUCT = struct.Struct(fmt)
            cls.SIZE = cls.STRUCT.size

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        # Resolved lazily: the dataclass decorator runs after __init_subclass__.
        try:
            return cls.__dict__["_FIELD_NAMES"]  # type: ignore[no-any-return]
        except KeyError:
            names = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
            type.__setattr__(cls, "_FIELD_NAMES", names)
            return names

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> Self:
        """Decode the record at `offset`; raises RecordError if the buffer is too short."""
        try:
            return cls(*cls.STRUCT.unpack_from(buf, offset))
        except struct.error as exc:
            raise RecordError(
                f"{cls.__name__}: need {cls.SIZE} bytes at offset {offset}"
            ) from exc

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        """Decode a buffer that holds exactly one record."""
        if len(memoryview(data)) != cls.SIZE:
            raise RecordError(f"{cls.__name__}: expected {cls.SIZE} bytes")
        return cls.unpack_from(data)

    def astuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._names())

    def pack(self) -> bytes:
        return self.STRUCT.pack(*self.astuple())

    def pack_into(self, buf: Buffer, offset: int = 0) -> None:
        self.STRUCT.pack_into(buf, offset, *self.astuple())

    def validate(self) -> None:
        """Raise the owning package's error if a field holds an impossible value."""


class Composite:
    """A layout of records laid end to end (a C struct that embeds other structs).

    Each part stays declared once, as its own Record; the composite is a frozen dataclass
    whose fields are the decoded parts, in order::

        @dataclass(frozen=True, slots=True)
        class EntryOut(Composite, parts=(EntryOutHead, Attr)):
            head: EntryOutHead
            attr: Attr

    `STRUCT` is the parts' formats joined (all little-endian, no alignment), for encoders
    that pack a flat tuple of values in one call.
    """

    __slots__ = ()

    PARTS: ClassVar[tuple[type[Record], ...]]
    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]

    def __init_subclass__(cls, parts: tuple[type[Record], ...] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if parts:
            cls.PARTS = parts
            cls.STRUCT = struct.Struct("<" + "".join(p.STRUCT.format.lstrip("<") for p in parts))
            cls.SIZE = cls.STRUCT.size

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> Self:
        values = []
        for part in cls.PARTS:
            values.append(part.unpack_from(buf, offset))
            offset += part.SIZE
        return cls(*values)

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        if len(memoryview(data)) != cls.SIZE:
            raise RecordError(f"{cls.__name__}: expected {cls.SIZE} bytes")
        return cls.unpack_from(data)

    def pack(self) -> bytes:
        return b"".join(getattr(self, f.name).pack() for f in fields(self))  # type: ignore[arg-type]
