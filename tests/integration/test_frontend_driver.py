"""The test frontend driver against a real peer: QEMU 7.2's C virtiofsd.

The C virtiofsd (libvhost-user) is the reference backend QEMU 7.2 ships: if our driver can
negotiate, start, stop, restart and run FUSE sessions against it with every option it
supports (split rings, 2 queues), the driver is a faithful stand-in for QEMU + a Linux guest
when it is pointed at our own backend. Packed rings cannot be checked here: virtiofsd 7.2
does not offer them (reference 16.6).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.c_virtiofsd import VIRTIOFSD, CVirtiofsd
from tests.support.driver_ring import RawDesc, SplitDriverRing
from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseDriver, FuseError
from tests.support.throughput import bench_lookup_getattr, bench_read, bench_readdirplus
from vhostfs.fuse import abi
from vhostfs.fuse.abi import InHeader, Opcode, OutHeader
from vhostfs.vhost_user.messages import FrontendReq, ProtocolFeatures, VirtioFeatures
from vhostfs.virtio.chain import F_NEXT, F_WRITE

FILE_SIZE = 3 * 1024 * 1024 + 123  # not a multiple of any read size: the last read is short
ENTRIES = 40


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(os.urandom(FILE_SIZE))
    (src / "dir").mkdir()
    for i in range(ENTRIES):
        (src / "dir" / f"e{i:03d}").write_bytes(b"x" * i)
    (src / "link").symlink_to("file")
    return src


@pytest.fixture
def virtiofsd(tree: Path, tmp_path: Path) -> Iterator[CVirtiofsd]:
    if not os.access(VIRTIOFSD, os.X_OK):
        pytest.fail(f"{VIRTIOFSD} not found: run hack/setup to install QEMU 7.2's virtiofsd")
    daemon = CVirtiofsd(tree, tmp_path / "vhost.sock", "-o", "readdirplus")
    yield daemon
    daemon.close()


def connect(daemon: CVirtiofsd, **options: object) -> Frontend:
    opts = FrontendOptions(timeout=10.0, **options)  # type: ignore[arg-type]
    return Frontend.connect(daemon.sock_path, opts)


def read_file(
    fuse: FuseDriver, nodeid: int, fh: int, chunk: int, in_flight: int, pages: bool = True
) -> bytes:
    calls = [fuse.read_call(nodeid, fh, off, chunk, pages) for off in range(0, FILE_SIZE, chunk)]
    replies = fuse.run_many(calls, in_flight)
    for call in calls:
        fuse.free(call)
    return b"".join(r.ok().payload for r in replies)


@pytest.mark.parametrize("in_flight", [1, 16])
def test_fuse_session(virtiofsd: CVirtiofsd, tree: Path, in_flight: int) -> None:
    with connect(virtiofsd) as frontend:
        fuse = FuseDriver(frontend)
        init = fuse.init()
        assert (init.major, init.minor, init.max_pages) == (7, 36, 256)

        entry = fuse.lookup(abi.ROOT_ID, b"file")
        assert entry.attr.size == FILE_SIZE
        attr = fuse.getattr(entry.nodeid)
        assert (attr.attr.ino, attr.attr.size) == (entry.attr.ino, FILE_SIZE)
        fh = fuse.open(entry.nodeid).fh
        expected = (tree / "file").read_bytes()
        assert read_file(fuse, entry.nodeid, fh, 128 << 10, in_flight) == expected
        assert read_file(fuse, entry.nodeid, fh, 4 << 10, in_flight, pages=False) == expected
        assert fuse.read(entry.nodeid, fh, FILE_SIZE, 4096) == b""
        fuse.release(entry.nodeid, fh)

        dir_id = fuse.lookup(abi.ROOT_ID, b"dir").nodeid
        dfh = fuse.opendir(dir_id).fh
        names = {d.name for d in fuse.readdir(dir_id, dfh, size=64 << 10)}
        assert names == {b".", b".."} | {f"e{i:03d}".encode() for i in range(ENTRIES)}
        fuse.releasedir(dir_id, dfh)

        # K lookups in flight at once, then one FORGET each on hiprio (used.len 0).
        lookups = [
            fuse.prepare(
                Opcode.LOOKUP, dir_id, f"e{i:03d}\0".encode(), (OutHeader.SIZE, abi.EntryOut.SIZE)
            )
            for i in range(ENTRIES)
        ]
        replies = fuse.run_many(lookups, in_flight)
        sizes = [abi.EntryOut.unpack(r.ok().payload).attr.size for r in replies]
        assert sizes == list(range(ENTRIES))
        for r in replies:
            assert fuse.forget(abi.EntryOut.unpack(r.payload).nodeid, 1) == 0
        for call in lookups:
            fuse.free(call)

        link = fuse.lookup(abi.ROOT_ID, b"link")
        assert fuse.readlink(link.nodeid) == b"file"
        assert fuse.statfs().bsize > 0
        with pytest.raises(FuseError) as missing:
            fuse.lookup(abi.ROOT_ID, b"missing")
        assert missing.value.errno == errno.ENOENT
        for nodeid in (entry.nodeid, dir_id, link.nodeid):
            assert fuse.forget(nodeid, 1) == 0
        assert fuse.destroy().header.error == 0


def per_queue(*names: str) -> list[str]:
    return [n for _ in range(2) for n in names]


def test_message_sequence_is_qemus(virtiofsd: CVirtiofsd) -> None:
    with connect(virtiofsd) as frontend:
        bases = frontend.stop()
        assert frontend.backend_features & VirtioFeatures.PROTOCOL_FEATURES
        assert frontend.protocol_features == 0x8C2B  # what QEMU acked (reference 16.2)
        assert (frontend.queue_num, frontend.max_mem_slots) == (2, 32)
        assert bases == [0, 0]
        sent = [(FrontendReq(r).name, flags, fds) for r, flags, fds in frontend.control.sent]
    assert [s[0] for s in sent] == [
        "GET_FEATURES",
        "GET_PROTOCOL_FEATURES",
        "SET_PROTOCOL_FEATURES",
        "GET_QUEUE_NUM",
        "GET_MAX_MEM_SLOTS",
        "SET_BACKEND_REQ_FD",
        "SET_OWNER",
        "GET_FEATURES",
        *per_queue("SET_VRING_CALL", "SET_VRING_ERR"),
        "SET_VRING_CALL",
        "SET_VRING_CALL",
        "SET_FEATURES",
        "ADD_MEM_REG",
        "ADD_MEM_REG",
        *per_queue("SET_VRING_NUM", "SET_VRING_BASE", "SET_VRING_ADDR", "SET_VRING_KICK"),
        "SET_VRING_ENABLE",
        "SET_VRING_ENABLE",
        "SET_VRING_CALL",
        "SET_VRING_CALL",
        "SET_VRING_ENABLE",
        "SET_VRING_ENABLE",
        "GET_VRING_BASE",
        "GET_VRING_BASE",
        "SET_VRING_CALL",
        "SET_VRING_CALL",
    ]
    need_reply = {name for name, flags, _ in sent if flags == 0x9}
    assert need_reply == {"SET_BACKEND_REQ_FD", "ADD_MEM_REG"}


@pytest.mark.parametrize(
    "options",
    [
        {"event_idx": False},
        {"indirect": False},
        {"mem_slots": False},
        {"protocol_features": 0},  # no REPLY_ACK, MQ or mem slots: SET_MEM_TABLE, no acks
        {"protocol_features": int(ProtocolFeatures.MQ | ProtocolFeatures.REPLY_ACK)},
        {"queue_size": 8, "indirect": False, "event_idx": False},
        {"queue_size": 1024, "memory_size": 256 << 20},
    ],
    ids=str,
)
def test_options(virtiofsd: CVirtiofsd, tree: Path, options: dict[str, object]) -> None:
    with connect(virtiofsd, **options) as frontend:
        fuse = FuseDriver(frontend)
        fuse.init()
        entry = fuse.lookup(abi.ROOT_ID, b"file")
        fh = fuse.open(entry.nodeid).fh
        small_ring = frontend.options.queue_size < 64
        data = read_file(
            fuse, entry.nodeid, fh, 64 << 10, 2 if small_ring else 16, pages=not small_ring
        )
        assert data == (tree / "file").read_bytes()
        assert frontend.used_mem_slots == bool(
            frontend.protocol_features & ProtocolFeatures.CONFIGURE_MEM_SLOTS
            and frontend.options.mem_slots
        )


def test_stop_and_restart_like_a_reboot(virtiofsd: CVirtiofsd, tree: Path) -> None:
    with connect(virtiofsd) as frontend:
        fuse = FuseDriver(frontend)
        fuse.init()
        nodeid = fuse.lookup(abi.ROOT_ID, b"file").nodeid
        assert fuse.forget(nodeid) == 0
        old_addresses = [q.ring.addresses for q in frontend.queues]
        assert frontend.stop() == [1, 2]  # one FORGET on hiprio; INIT + LOOKUP on queue 1

        frontend.start()
        assert all(
            q.ring.addresses != old for q, old in zip(frontend.queues, old_addresses, strict=True)
        )
        assert fuse.init().minor == 36
        entry = fuse.lookup(abi.ROOT_ID, b"file")
        fh = fuse.open(entry.nodeid).fh
        assert fuse.read(entry.nodeid, fh, 0, 4096) == (tree / "file").read_bytes()[:4096]
        assert frontend.stop() == [0, 4]  # INIT, LOOKUP, OPEN, READ
        assert sum(1 for r, _, _ in frontend.control.sent if r == FrontendReq.ADD_MEM_REG) == 2


def test_packed_rings_are_not_offered(virtiofsd: CVirtiofsd) -> None:
    with pytest.raises(RuntimeError, match="does not offer"):
        connect(virtiofsd, packed=True)


def test_hand_made_chain(virtiofsd: CVirtiofsd) -> None:
    """A request placed with raw descriptors at chosen table slots is served normally."""
    with connect(virtiofsd, indirect=False) as frontend:
        fuse = FuseDriver(frontend)
        mem = frontend.mem
        ring = frontend.queue(1).ring
        args = abi.InitIn(7, 38, 128 << 10, 0x7BFFFFFB, 0x0B).pack()
        req = mem.alloc(InHeader.SIZE + len(args))
        InHeader(InHeader.SIZE + len(args), Opcode.INIT, 42, 0, 0, 0, 0, 0, 0).pack_into(
            mem.buf, req
        )
        mem.write(req + InHeader.SIZE, args)
        out = mem.alloc(80)
        descs = {  # deliberately out of order: 5 -> 2 -> 7 -> 3
            5: RawDesc(req, InHeader.SIZE, F_NEXT, 2),
            2: RawDesc(req + InHeader.SIZE, len(args), F_NEXT, 7),
            7: RawDesc(out, OutHeader.SIZE, F_NEXT | F_WRITE, 3),
            3: RawDesc(out + OutHeader.SIZE, 64, F_WRITE),
        }
        assert isinstance(ring, SplitDriverRing)
        ring.post_raw(descs, 5)
        frontend.queue(1).flush()
        assert frontend.queue(1).wait(frontend.deadline()) == [(5, 80)]
        header = OutHeader.unpack_from(mem.buf, out)
        assert (header.len, header.error, header.unique) == (80, 0, 42)
        assert fuse.lookup(abi.ROOT_ID, b"file").attr.size == FILE_SIZE


def test_index_wraparound_and_throughput_loops(virtiofsd: CVirtiofsd) -> None:
    """70,000 requests through a 64-entry ring: the u16 indexes wrap past 65535."""
    with connect(virtiofsd, queue_size=64) as frontend:
        fuse = FuseDriver(frontend)
        fuse.init()
        entry = fuse.lookup(abi.ROOT_ID, b"file")
        fh = fuse.open(entry.nodeid).fh
        result = bench_read(fuse, entry.nodeid, fh, FILE_SIZE, 4096, 16, count=70_000)
        assert (result.requests, result.payload_bytes) == (70_000, 70_000 * 4096)
        small = [
            bench_read(fuse, entry.nodeid, fh, FILE_SIZE, 128 << 10, 1, count=50),
            bench_lookup_getattr(fuse, abi.ROOT_ID, b"file", 16, count=200),
            bench_readdirplus(fuse, fuse.lookup(abi.ROOT_ID, b"dir").nodeid, 16, count=50),
        ]
        assert [r.requests for r in small] == [50, 200, 50]
        assert small[0].payload_bytes == 50 * (128 << 10)
        assert all(r.rps > 0 for r in small)
        requests_on_q1 = 3 + 70_000 + 50 + 1 + 200 + 2 + 50 + 1  # + lookups, opendir, releasedir
        assert frontend.stop()[1] == requests_on_q1 % 65536
