"""A host stat as the guest's attributes: times split as the kernel does, rdev re-encoded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vhostfs.fuse.filesystem import Attr, decode_dev, encode_dev


@pytest.mark.parametrize(
    "ns",
    [1_700_000_000_123_456_789, 0, 999_999_999, -1, -1_500_000_000, -2_000_000_000],
)
def test_times_are_whole_seconds_and_a_positive_remainder(tmp_path: Path, ns: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    os.utime(path, ns=(ns, ns))
    attr = Attr.from_stat(os.lstat(path))
    assert 0 <= attr.atime_ns < 1_000_000_000 and 0 <= attr.mtime_ns < 1_000_000_000
    assert attr.atime * 1_000_000_000 + attr.atime_ns == ns
    assert attr.mtime * 1_000_000_000 + attr.mtime_ns == ns
    assert (attr.ino, attr.size, attr.nlink) == (os.lstat(path).st_ino, 1, 1)


def test_device_numbers_use_the_kernels_32_bit_encoding() -> None:
    # new_encode_dev: minor's low byte, major, then minor's high bits from bit 20.
    assert encode_dev(os.makedev(8, 1)) == 0x801
    assert encode_dev(os.makedev(259, 0x12345)) == 0x12310345
    for dev in (os.makedev(1, 3), os.makedev(259, 0x12345), os.makedev(4095, 0xFFFFF)):
        assert decode_dev(encode_dev(dev)) == dev
    st = os.lstat("/dev/null")
    assert Attr.from_stat(st).rdev == encode_dev(st.st_rdev) == 0x103
