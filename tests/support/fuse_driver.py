"""FUSE requests over a test Frontend: the guest kernel's side of virtio-fs (reference 13).

A request is one descriptor chain: device-readable `InHeader` + arguments, then device-
writable room for `OutHeader` + reply. `FuseCall` holds one request's guest buffers (allocated
once) and its chain, so it can be submitted again and again with a new `unique` — the
throughput loop relies on that. Shapes follow what Linux 6.1 sends (reference 13.1): readable
[40, len(args)], writable [16, reply size] or [16, 4096 x N] for READ; FORGET is one direct
48-byte descriptor on hiprio with no writable part.

Records come from `vhostfs/fuse/abi.py`; nothing here re-declares a FUSE layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from tests.support.driver_ring import ChainSpec
from tests.support.frontend import Frontend
from vhostfs.fuse import abi
from vhostfs.fuse.abi import InHeader, Opcode, OutHeader

# What a Linux 6.1 guest sends in INIT (reference 13.3).
GUEST_INIT_MINOR: Final = 38
GUEST_INIT_FLAGS: Final = 0x7BFFFFFB
GUEST_INIT_FLAGS2: Final = 0x0B
GUEST_MAX_READAHEAD: Final = 128 << 10
PAGE: Final = 4096
HIPRIO: Final = 0
# Readable bytes of a FORGET request: InHeader + ForgetIn in one descriptor.
FORGET_LEN: Final = InHeader.SIZE + abi.ForgetIn.SIZE


class FuseError(OSError):
    """The backend answered a FUSE request with an error (`errno` is positive)."""


@dataclass(slots=True)
class FuseCall:
    """One FUSE request with its guest buffers; reusable after it completed."""

    queue: int
    opcode: int
    nodeid: int
    in_gpa: int  # InHeader + args (device-readable)
    in_len: int
    out_gpa: int  # OutHeader + reply room (device-writable); 0 when no reply is expected
    out_len: int
    chain: ChainSpec
    unique: int = 0
    used_len: int = -1  # what the device put in the used ring (-1: in flight or never sent)
    in_flight: bool = False


@dataclass(frozen=True, slots=True)
class FuseReply:
    header: OutHeader
    payload: bytes  # the reply after the out header (bounded by used.len and header.len)
    used_len: int

    def ok(self) -> FuseReply:
        """Return self, or raise FuseError if the backend replied with an error."""
        if self.header.error:
            err = -self.header.error
            raise FuseError(err, f"FUSE error {err} ({os.strerror(err)})")
        return self


@dataclass(frozen=True, slots=True)
class Dirent:
    ino: int
    off: int  # cookie resuming after this entry
    type: int  # DT_*
    name: bytes
    entry: abi.EntryOut | None = None  # READDIRPLUS only


@dataclass(slots=True)
class FuseDriver:
    """Builds, submits and collects FUSE requests on a started `Frontend`."""

    frontend: Frontend
    queue: int = 1  # the request queue used by default (Linux 6.1 uses only queue 1)
    uid: int = 0
    gid: int = 0
    pid: int = 0
    next_unique: int = 2  # even and increasing by 2, as Linux does (odd is for interrupts)
    _by_id: list[dict[int, FuseCall]] = field(default_factory=list)  # queue -> ring id -> call

    def __post_init__(self) -> None:
        self._by_id = [{} for _ in self.frontend.queues]

    # --- building -------------------------------------------------------------------------

    def prepare(
        self,
        opcode: int,
        nodeid: int,
        args: bytes = b"",
        reply_sizes: Sequence[int] = (OutHeader.SIZE,),
        *,
        queue: int | None = None,
        in_split: Sequence[int] | None = None,
    ) -> FuseCall:
        """Allocate and fill a request. `reply_sizes` are the writable descriptor lengths
        (empty: no writable part); `in_split` overrides the readable lengths [40, len(args)].
        """
        mem = self.frontend.mem
        in_len = InHeader.SIZE + len(args)
        in_gpa = mem.alloc(in_len)
        InHeader(in_len, opcode, 0, nodeid, self.uid, self.gid, self.pid, 0, 0).pack_into(
            mem.buf, in_gpa
        )
        mem.write(in_gpa + InHeader.SIZE, args)
        lens = list(in_split or ([InHeader.SIZE, len(args)] if args else [InHeader.SIZE]))
        if sum(lens) != in_len:
            raise ValueError(f"in_split {lens} does not add up to {in_len}")
        segs: list[tuple[int, int, bool]] = []
        offset = 0
        for n in lens:
            segs.append((in_gpa + offset, n, False))
            offset += n
        out_len = sum(reply_sizes)
        out_gpa = mem.alloc(out_len) if out_len else 0
        offset = 0
        for n in reply_sizes:
            segs.append((out_gpa + offset, n, True))
            offset += n
        table = mem.alloc(16 * len(segs), 16) if len(segs) > 1 else 0
        return FuseCall(
            self.queue if queue is None else queue,
            opcode,
            nodeid,
            in_gpa,
            in_len,
            out_gpa,
            out_len,
            ChainSpec(segs, table),
        )

    def free(self, call: FuseCall) -> None:
        """Give a completed call's guest memory back."""
        mem = self.frontend.mem
        mem.free(call.in_gpa, call.in_len)
        if call.out_len:
            mem.free(call.out_gpa, call.out_len)
        if call.chain.table_gpa:
            mem.free(call.chain.table_gpa, 16 * len(call.chain.segments), 16)

    def set_args(self, call: FuseCall, offset: int, data: bytes) -> None:
        """Overwrite argument bytes of a prepared call (e.g. a READ offset) before resubmit."""
        self.frontend.mem.write(call.in_gpa + InHeader.SIZE + offset, data)

    # --- submitting and collecting ------------------------------------------------------------

    def add(self, call: FuseCall) -> None:
        """Place `call` on its ring with a fresh unique, without kicking."""
        if call.in_flight:
            raise RuntimeError("call already in flight")
        call.unique = self.next_unique
        self.next_unique += 2
        # unique sits at byte 8 of the in header.
        self.frontend.mem.buf[call.in_gpa + 8 : call.in_gpa + 16] = call.unique.to_bytes(
            8, "little"
        )
        ident = self.frontend.queues[call.queue].add(call.chain)  # may raise RingFull
        call.used_len = -1
        call.in_flight = True
        self._by_id[call.queue][ident] = call

    def fits(self, call: FuseCall) -> bool:
        """Is there room on the ring for `call` right now?"""
        ring = self.frontend.queues[call.queue].ring
        return ring.descriptors_needed(call.chain) <= ring.free_descriptors

    def submit(self, *calls: FuseCall) -> None:
        """Place calls and notify their queues once (if the notification rules ask)."""
        for call in calls:
            self.add(call)
        for qi in {c.queue for c in calls}:
            self.frontend.queues[qi].flush()

    def collect(self, queue: int | None = None, deadline: float | None = None) -> list[FuseCall]:
        """Wait for at least one completion on `queue`; returns the completed calls."""
        qi = self.queue if queue is None else queue
        q = self.frontend.queues[qi]
        by_id = self._by_id[qi]
        done = []
        for ident, length in q.wait(deadline or self.frontend.deadline()):
            call = by_id.pop(ident)
            call.used_len = length
            call.in_flight = False
            done.append(call)
        return done

    def wait_for(self, call: FuseCall, deadline: float | None = None) -> None:
        """Block until `call` completed; calls completing meanwhile are marked done too."""
        deadline = deadline or self.frontend.deadline()
        while call.in_flight:
            self.collect(call.queue, deadline)

    def reply(self, call: FuseCall) -> FuseReply:
        """Decode a completed call's reply (bounded by what the device claims it wrote)."""
        if call.used_len < OutHeader.SIZE:
            raise AssertionError(f"{Opcode(call.opcode).name}: used.len {call.used_len}")
        mem = self.frontend.mem
        header = OutHeader.unpack_from(mem.buf, call.out_gpa)
        if header.unique != call.unique:
            raise AssertionError(f"reply unique {header.unique} != request {call.unique}")
        end = min(header.len, call.used_len, call.out_len)
        return FuseReply(
            header, mem.read(call.out_gpa + OutHeader.SIZE, end - OutHeader.SIZE), call.used_len
        )

    def call(
        self,
        opcode: int,
        nodeid: int,
        args: bytes = b"",
        reply_sizes: Sequence[int] = (OutHeader.SIZE,),
        *,
        queue: int | None = None,
    ) -> FuseReply:
        """One request, start to finish."""
        call = self.prepare(opcode, nodeid, args, reply_sizes, queue=queue)
        try:
            self.submit(call)
            self.wait_for(call)
            return self.reply(call)
        finally:
            if not call.in_flight:
                self.free(call)

    def run_many(
        self, calls: Sequence[FuseCall], in_flight: int, deadline: float | None = None
    ) -> list[FuseReply]:
        """Run prepared calls (all on one queue) keeping up to `in_flight` outstanding, fewer
        while the ring has no room; replies in input order."""
        deadline = deadline or self.frontend.deadline()
        queue = self.frontend.queues[calls[0].queue]
        pending = list(reversed(calls))
        outstanding = 0
        while pending or outstanding:
            # With nothing outstanding, add() itself reports a chain that can never fit.
            while (
                pending and outstanding < in_flight and (not outstanding or self.fits(pending[-1]))
            ):
                self.add(pending.pop())
                outstanding += 1
            queue.flush()
            outstanding -= len(self.collect(calls[0].queue, deadline))
        return [self.reply(c) for c in calls]

    # --- operations -----------------------------------------------------------------------

    def init(
        self,
        minor: int = GUEST_INIT_MINOR,
        flags: int = GUEST_INIT_FLAGS,
        flags2: int = GUEST_INIT_FLAGS2,
        max_readahead: int = GUEST_MAX_READAHEAD,
    ) -> abi.InitOut:
        args = abi.InitIn(abi.KERNEL_VERSION, minor, max_readahead, flags, flags2).pack()
        r = self.call(Opcode.INIT, 0, args, (OutHeader.SIZE, abi.InitOut.SIZE)).ok()
        return abi.InitOut.unpack_from(r.payload.ljust(abi.InitOut.SIZE, b"\0"))

    def lookup(self, parent: int, name: bytes) -> abi.EntryOut:
        r = self.call(Opcode.LOOKUP, parent, name + b"\0", (OutHeader.SIZE, abi.EntryOut.SIZE))
        return abi.EntryOut.unpack(r.ok().payload)

    def getattr(self, nodeid: int, fh: int | None = None) -> abi.AttrOut:
        args = abi.GetattrIn(abi.GETATTR_FH if fh is not None else 0, 0, fh or 0).pack()
        r = self.call(Opcode.GETATTR, nodeid, args, (OutHeader.SIZE, abi.AttrOut.SIZE))
        return abi.AttrOut.unpack(r.ok().payload)

    def open(
        self, nodeid: int, flags: int = os.O_RDONLY, *, opcode: int = Opcode.OPEN
    ) -> abi.OpenOut:
        r = self.call(
            opcode, nodeid, abi.OpenIn(flags, 0).pack(), (OutHeader.SIZE, abi.OpenOut.SIZE)
        )
        return abi.OpenOut.unpack(r.ok().payload)

    def opendir(self, nodeid: int) -> abi.OpenOut:
        return self.open(nodeid, os.O_RDONLY | os.O_DIRECTORY, opcode=Opcode.OPENDIR)

    def read_call(
        self, nodeid: int, fh: int, offset: int, size: int, pages: bool = True
    ) -> FuseCall:
        """A prepared READ: writable [16, 4096 x N] like the guest, or [16, size]."""
        args = abi.ReadIn(fh, offset, size, abi.READ_LOCKOWNER, 0, 0, 0).pack()
        room = [PAGE] * -(-size // PAGE) if pages else [size]
        return self.prepare(Opcode.READ, nodeid, args, [OutHeader.SIZE, *room])

    def read(self, nodeid: int, fh: int, offset: int, size: int, pages: bool = True) -> bytes:
        call = self.read_call(nodeid, fh, offset, size, pages)
        try:
            self.submit(call)
            self.wait_for(call)
            return self.reply(call).ok().payload
        finally:
            self.free(call)

    def readdir(
        self, nodeid: int, fh: int, offset: int = 0, size: int = PAGE, plus: bool = False
    ) -> list[Dirent]:
        op = Opcode.READDIRPLUS if plus else Opcode.READDIR
        args = abi.ReadIn(fh, offset, size, 0, 0, 0, 0).pack()
        r = self.call(op, nodeid, args, (OutHeader.SIZE, size)).ok()
        return parse_dirents(r.payload, plus)

    def release(self, nodeid: int, fh: int, *, opcode: int = Opcode.RELEASE) -> None:
        self.call(opcode, nodeid, abi.ReleaseIn(fh, 0, 0, 0).pack()).ok()

    def releasedir(self, nodeid: int, fh: int) -> None:
        self.release(nodeid, fh, opcode=Opcode.RELEASEDIR)

    def forget_call(self, nodeid: int, nlookup: int) -> FuseCall:
        """FORGET as Linux sends it: one direct 48-byte descriptor on hiprio, nothing writable."""
        return self.prepare(
            Opcode.FORGET,
            nodeid,
            abi.ForgetIn(nlookup).pack(),
            (),
            queue=HIPRIO,
            in_split=[FORGET_LEN],
        )

    def forget(self, nodeid: int, nlookup: int = 1) -> int:
        """Send FORGET and wait until the backend returns the descriptor; returns used.len."""
        call = self.forget_call(nodeid, nlookup)
        try:
            self.submit(call)
            self.wait_for(call)
            return call.used_len
        finally:
            self.free(call)

    def statfs(self) -> abi.KStatfs:
        r = self.call(Opcode.STATFS, 1, b"", (OutHeader.SIZE, abi.KStatfs.SIZE))
        return abi.KStatfs.unpack(r.ok().payload)

    def getxattr(self, nodeid: int, name: bytes, size: int) -> bytes | int:
        """Value bytes, or (size 0) the value's length."""
        args = abi.GetxattrIn(size, 0).pack() + name + b"\0"
        room = size or abi.GetxattrOut.SIZE
        r = self.call(Opcode.GETXATTR, nodeid, args, (OutHeader.SIZE, room)).ok()
        return r.payload if size else abi.GetxattrOut.unpack(r.payload).size

    def readlink(self, nodeid: int) -> bytes:
        return self.call(Opcode.READLINK, nodeid, b"", (OutHeader.SIZE, PAGE - 1)).ok().payload

    def destroy(self) -> FuseReply:
        return self.call(Opcode.DESTROY, 0)


def parse_dirents(data: bytes, plus: bool) -> list[Dirent]:
    """Decode packed fuse_dirent / fuse_direntplus records (each padded to 8 bytes)."""
    out = []
    pos = 0
    head = abi.DirentplusHeader if plus else abi.DirentHeader
    while pos + head.SIZE <= len(data):
        if plus:
            h = abi.DirentplusHeader.unpack_from(data, pos)
            entry: abi.EntryOut | None = abi.EntryOut(h.head, h.attr)
            ino, off, namelen, typ = h.dirent.ino, h.dirent.off, h.dirent.namelen, h.dirent.type
        else:
            d = abi.DirentHeader.unpack_from(data, pos)
            entry, ino, off, namelen, typ = None, d.ino, d.off, d.namelen, d.type
        name = data[pos + head.SIZE : pos + head.SIZE + namelen]
        if len(name) != namelen:
            raise AssertionError(f"dirent name runs past the reply ({namelen} bytes)")
        out.append(Dirent(ino, off, typ, name, entry))
        pos += abi.rec_align(head.SIZE + namelen)
    if pos != len(data):
        raise AssertionError(f"{len(data) - pos} trailing bytes after the last dirent")
    return out
