"""Layouts of the FUSE records against include/uapi/linux/fuse.h (protocol 7.38)."""

from __future__ import annotations

import struct

import pytest

from vhostfs.fuse import abi

# sizeof() of each struct in fuse.h.
SIZES = {
    abi.InHeader: 40,
    abi.OutHeader: 16,
    abi.InitIn: 64,
    abi.InitInCompat: 16,
    abi.InitInMajorMinor: 8,
    abi.InitOut: 64,
    abi.Attr: 88,
    abi.AttrOutHead: 16,
    abi.AttrOut: 104,
    abi.EntryOutHead: 40,
    abi.EntryOut: 128,
    abi.DirentHeader: 24,
    abi.DirentplusHeader: 152,
    abi.ForgetIn: 8,
    abi.ForgetOne: 16,
    abi.BatchForgetIn: 8,
    abi.GetattrIn: 16,
    abi.SetattrIn: 88,
    abi.MknodIn: 16,
    abi.MkdirIn: 8,
    abi.RenameIn: 8,
    abi.Rename2In: 16,
    abi.LinkIn: 8,
    abi.OpenIn: 8,
    abi.CreateIn: 16,
    abi.OpenOut: 16,
    abi.ReleaseIn: 24,
    abi.FlushIn: 24,
    abi.ReadIn: 40,
    abi.WriteIn: 40,
    abi.WriteOut: 8,
    abi.KStatfs: 80,
    abi.FsyncIn: 16,
    abi.SetxattrIn: 16,
    abi.SetxattrInCompat: 8,
    abi.GetxattrIn: 8,
    abi.GetxattrOut: 8,
    abi.AccessIn: 8,
    abi.InterruptIn: 8,
    abi.FallocateIn: 32,
    abi.LseekIn: 24,
    abi.LseekOut: 8,
    abi.SyncfsIn: 8,
    abi.CopyFileRangeIn: 56,
    abi.SetupmappingIn: 40,
    abi.ExtHeader: 8,
}


@pytest.mark.parametrize(
    ("record", "size"), SIZES.items(), ids=lambda v: getattr(v, "__name__", "")
)
def test_size_matches_fuse_h(record: type[abi.Record], size: int) -> None:
    assert size == record.SIZE
    assert size % 8 == 0 or record is abi.InterruptIn  # every struct is 8-aligned


def test_compat_sizes() -> None:
    assert abi.COMPAT_SETXATTR_IN_SIZE == abi.SetxattrInCompat.SIZE
    assert abi.COMPAT_22_INIT_IN_SIZE == abi.InitInCompat.SIZE
    assert abi.COMPAT_INIT_IN_SIZE == abi.InitInMajorMinor.SIZE


def test_in_header_offsets() -> None:
    raw = abi.InHeader(1, 2, 3, 4, 5, 6, 7, 8, 9).pack()
    assert struct.unpack_from("<H", raw, 36)[0] == 8  # total_extlen
    assert struct.unpack_from("<Q", raw, 16)[0] == 4  # nodeid


def test_init_out_offsets() -> None:
    out = abi.InitOut(7, 38, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10).pack()
    assert struct.unpack_from("<I", out, 20)[0] == 5  # max_write
    assert struct.unpack_from("<H", out, 28)[0] == 7  # max_pages
    assert struct.unpack_from("<H", out, 30)[0] == 8  # map_alignment
    assert struct.unpack_from("<I", out, 32)[0] == 9  # flags2
    assert struct.unpack_from("<I", out, 36)[0] == 10  # max_stack_depth
    assert out[40:] == bytes(24)


def test_entry_out_embeds_attr_at_40() -> None:
    raw = abi.EntryOut.STRUCT.pack(*range(1, 23))
    attr = abi.Attr.unpack_from(raw, 40)
    assert attr.ino == 7 and attr.flags == 22
    decoded = abi.EntryOut.unpack(raw)
    assert decoded.nodeid == 1 and decoded.attr == attr
    assert decoded.pack() == raw


def test_direntplus_dirent_at_128() -> None:
    raw = abi.DirentplusHeader.STRUCT.pack(*range(1, 27))
    assert abi.DirentHeader.unpack_from(raw, 128) == abi.DirentHeader(23, 24, 25, 26)
    assert abi.DirentplusHeader.unpack(raw).dirent == abi.DirentHeader(23, 24, 25, 26)


def test_decode_init_in_all_forms() -> None:
    full = abi.InitIn(7, 38, 4096, 0x40000000, 3).pack()
    assert abi.decode_init_in(full) == abi.InitIn(7, 38, 4096, 0x40000000, 3)
    assert abi.decode_init_in(full[:16]) == abi.InitIn(7, 38, 4096, 0x40000000, 0)
    assert abi.decode_init_in(full[:8]) == abi.InitIn(7, 38, 0, 0, 0)


def test_flags2_bits_sit_above_32() -> None:
    assert abi.InitFlags.SECURITY_CTX == 1 << 32
    assert abi.InitFlags.HAS_EXPIRE_ONLY == 1 << 35
    assert abi.InitFlags.MAX_PAGES == 1 << 22


def test_opcodes_match_kernel_numbers() -> None:
    assert abi.Opcode.BATCH_FORGET == 42
    assert abi.Opcode.READDIRPLUS == 44
    assert abi.Opcode.SYNCFS == 50
    assert abi.Opcode.STATX == 52


def test_rec_align() -> None:
    assert [abi.rec_align(n) for n in (0, 1, 8, 25, 32)] == [0, 8, 8, 32, 32]
