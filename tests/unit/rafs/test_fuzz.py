"""Garbage in, RafsError out: mutated fixtures and random bytes never crash the reader.

The invariant (as in h11's fuzzing): any input either reads or raises a RafsError, never
another exception, never a hang, never an allocation sized by a lying field. Mutations are
applied at every offset of the structures (byte flips and truncations); hypothesis adds
random multi-byte edits. (No input has found a bug yet; any that does belongs here as a case.)
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rafs

from . import synth_v6 as s
from .conftest import V5_DIR, V6_DIR
from .mutate import exercise

V5 = (V5_DIR / "bootstrap").read_bytes()
V6 = (V6_DIR / "bootstrap").read_bytes()


def _interesting(buf: bytes, step: int) -> list[int]:
    """Every non-zero byte, plus a grid over the zero runs (reserved fields, padding)."""
    return sorted({i for i, b in enumerate(buf) if b} | set(range(0, len(buf), step)))


def _flip(buf: bytes, offset: int, mask: int) -> bytes:
    out = bytearray(buf)
    out[offset] ^= mask
    return bytes(out)


def test_fixtures_read_cleanly() -> None:
    assert exercise(V5) == "ok"
    assert exercise(V6) == "ok"


@pytest.mark.parametrize("mask", [0xFF, 0x01, 0x80])
@pytest.mark.parametrize(("name", "buf"), [("v5", V5), ("v6", V6)])
def test_every_byte_flipped(name: str, buf: bytes, mask: int) -> None:
    offsets = _interesting(buf, 61)
    if mask != 0xFF:  # single-bit flips on a sample: they mostly repeat the 0xFF outcomes
        offsets = offsets[::7]
    outcomes = {exercise(_flip(buf, offset, mask)) for offset in offsets}
    assert outcomes <= {"ok", "FormatError", "Unsupported", "NotFound", "DigestMismatch",
                        "NotADirectory", "InvalidArgument"}, name


@pytest.mark.parametrize(("name", "buf", "step"), [("v5", V5, 8), ("v6", V6, 32)])
def test_every_truncation(name: str, buf: bytes, step: int) -> None:
    cuts = set(range(0, len(buf), step)) | {1, 7, 1023, 1027, 1151, 1407, len(buf) - 1}
    for cut in sorted(cuts):
        assert exercise(buf[:cut]) != "ok" or cut >= len(buf) - step, (name, cut)


def test_v5_flips_of_the_digest_are_detected() -> None:
    (value,) = struct.unpack_from("<I", V5, 8192)
    mutated = _flip(V5, (value << 3) + 5, 0x10)  # root inode's digest
    assert exercise(mutated) == "DigestMismatch"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([V5, V6]), data=st.data())
def test_random_edits(base: bytes, data: st.DataObject) -> None:
    buf = bytearray(base)
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)),
                               min_size=1, max_size=8))
    for offset, value in edits:
        buf[offset] = value
    exercise(bytes(buf))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=12000))
def test_random_bytes(raw: bytes) -> None:
    with pytest.raises(rafs.RafsError):
        rafs.Image.from_bytes(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=9000), st.sampled_from([V5[:8], V6[:1028]]))
def test_random_bytes_with_magic(raw: bytes, head: bytes) -> None:
    exercise(head + raw)


def _synthetic() -> bytes:
    shared = s.f(b"same", compact=True)
    names = {b"n%04d-%s" % (i, b"y" * 100): s.f(b"") for i in range(50)}  # two blocks
    tree = s.d({b"a": shared, b"b": shared, b"sub": s.d(names),
                b"x": s.f(b"v" * 9000, xattrs={(1, b"k"): b"v"}, holes=frozenset({1})),
                b"ln": s.link(b"t" * 100)})
    return s.build(tree)[0]


def test_synthetic_v6_flips() -> None:
    """Multi-block directories, xattrs, holes, hardlinks and symlinks under byte flips."""
    buf = _synthetic()
    assert exercise(buf) == "ok"
    offsets = _interesting(buf, 97)
    outcomes = {exercise(_flip(buf, offset, 0xFF)) for offset in offsets[::3]}
    assert "FormatError" in outcomes
