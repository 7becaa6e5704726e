"""A minimal io_uring over ctypes and mmap: vectored reads that the kernel runs elsewhere.

Why: a 128 KiB READ spends about 60% of its time in the kernel's copy from the page cache
into guest memory, and a Python thread copying cannot let the next request's Python run on
the other core (the GIL is not the problem; the copy is on the same thread). Submitted with
IOSQE_ASYNC, io_uring hands the copy to one of its own kernel workers, so the serving thread
goes on with the next request while the copy runs on another core, and picks the result up
from the completion ring later. See queuethread.py and offload.py for how requests use it.

Only what that needs: READV, a registered eventfd that signals completions (the serving
thread polls it next to its kick fd), and a non-blocking reap. One thread owns an instance.

Memory ordering: the rings are shared with the kernel through mmap. We read the kernel's
tail before the entries it publishes and publish our own tail after the entries we wrote;
CPython performs these loads and stores in program order, and x86-64 (the only target of
this project, as for the virtqueues in virtio/ring.py) does not reorder them visibly.

Spec: Linux include/uapi/linux/io_uring.h, io_uring_setup(2), io_uring_enter(2).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import struct
from typing import Final

log = logging.getLogger(__name__)

_SYS_IO_URING_SETUP: Final = 425
_SYS_IO_URING_ENTER: Final = 426
_SYS_IO_URING_REGISTER: Final = 427
_OFF_SQ_RING: Final = 0
_OFF_CQ_RING: Final = 0x8000000
_OFF_SQES: Final = 0x10000000
_FEAT_SINGLE_MMAP: Final = 1 << 0
_ENTER_GETEVENTS: Final = 1 << 0
_REGISTER_EVENTFD: Final = 4
_REGISTER_IOWQ_MAX_WORKERS: Final = 19
_OP_READV: Final = 1
# Completions of kernel-worker reads reach us as task work. By default the kernel
# interrupts our thread for each (an IPI): that made a 128 KiB read cost more CPU than doing
# it ourselves. With COOP_TASKRUN (Linux 5.19) they are posted at our next syscall, which
# the serving loop makes anyway (the next submission, an interrupt, poll).
_SETUP_COOP_TASKRUN: Final = 1 << 8
_SQE_ASYNC: Final = 1 << 4  # always run in a kernel worker, never inline in the submitter
_ENTER_RETRIES: Final = 100  # EINTR/EAGAIN/EBUSY are passing states; never spin forever

# struct io_uring_params: 10 u32, then io_sqring_offsets and io_cqring_offsets (8 u32 + u64
# each). Only the fields we read are named.
_PARAMS: Final = struct.Struct("<10I8IQ8IQ")
# struct io_uring_sqe for READV: opcode, flags, ioprio, fd, off, addr (the iovec array), len
# (the iovec count), rw_flags, user_data; the remaining 24 bytes stay zero.
_SQE: Final = struct.Struct("<BBHiQQIIQ24x")
# struct io_uring_cqe: user_data, res (bytes or -errno), flags.
_CQE: Final = struct.Struct("<QiI")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


class IoUring:
    """One io_uring instance with `entries` submission slots, owned by one thread.

    The owner keeps at most `capacity` reads in flight (the completion ring, twice as
    large, then never overflows) and keeps every iovec array and buffer a read points at
    alive until its completion has been reaped.
    """

    def __init__(self, entries: int) -> None:
        params = bytearray(_PARAMS.size)  # filled in by the kernel
        struct.pack_into("<I", params, 8, _SETUP_COOP_TASKRUN)
        raw = (ctypes.c_char * _PARAMS.size).from_buffer(params)
        fd = _check(_syscall(_SYS_IO_URING_SETUP, entries, raw), "io_uring_setup")
        del raw  # releases the export of `params`
        self.fd = fd
        self.eventfd = -1
        self._maps: list[mmap.mmap] = []
        try:
            self._map(params)
            self.eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            registered = ctypes.byref(ctypes.c_int(self.eventfd))
            _check(
                _syscall(_SYS_IO_URING_REGISTER, fd, _REGISTER_EVENTFD, registered, 1),
                "io_uring_register(EVENTFD)",
            )
            self._limit_workers()
        except BaseException:
            self.close()
            raise

    def _limit_workers(self) -> None:
        """At most one kernel worker per core we do not run on (best effort, Linux 5.15).

        The serving thread keeps one core busy; more workers than the other cores only
        preempt it (measured on 2 cores: 6 workers, ~7000 preemptions of the serving thread
        a second and 32-37k READs of 128 KiB/s; 1 worker: 40k/s).
        """
        cores = len(os.sched_getaffinity(0))
        workers = max(1, cores - 1)
        limits = (ctypes.c_uint * 2)(workers, workers)  # bounded (files), unbounded work
        _syscall(_SYS_IO_URING_REGISTER, self.fd, _REGISTER_IOWQ_MAX_WORKERS, limits, 2)

    def _map(self, params: bytearray) -> None:
        fields = _PARAMS.unpack(params)
        sq_entries, cq_entries, _, _, _, features = fields[:6]
        # With at most `capacity` in flight, every slot we reuse has been consumed
        # (submit_readv enters the kernel for each submission); the kernel's SQ head only
        # tells a failed submission whether to take its entry back.
        sq_head, sq_tail, sq_mask, _, _, _, sq_array = fields[10:17]
        cq_head, cq_tail, cq_mask, _, _, cqes = fields[19:25]
        sq_size = sq_array + sq_entries * 4
        cq_size = cqes + cq_entries * _CQE.size
        if features & _FEAT_SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        sq_ring = self._mmap(sq_size, _OFF_SQ_RING)
        cq_ring = sq_ring if features & _FEAT_SINGLE_MMAP else self._mmap(cq_size, _OFF_CQ_RING)
        self._sqes = self._mmap(sq_entries * _SQE.size, _OFF_SQES)
        sq_words = memoryview(sq_ring).cast("I")
        cq_words = memoryview(cq_ring).cast("I")
        self._sq_words, self._cq_words = sq_words, cq_words
        self._sq_head_at, self._sq_tail_at = sq_head // 4, sq_tail // 4
        self._sq_array_at = sq_array // 4
        self._sq_mask = sq_words[sq_mask // 4]
        self._cq_head_at, self._cq_tail_at = cq_head // 4, cq_tail // 4
        self._cq_mask = cq_words[cq_mask // 4]
        self._cq_ring, self._cqes = cq_ring, cqes
        self._sq_tail = sq_words[self._sq_tail_at]
        self.capacity = min(sq_entries, cq_entries // 2)

    def _mmap(self, size: int, offset: int) -> mmap.mmap:
        mapping = mmap.mmap(
            self.fd,
            size,
            flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=offset,
        )
        self._maps.append(mapping)
        return mapping

    def submit_readv(self, fd: int, iovecs: int, count: int, offset: int, user_data: int) -> None:
        """Start a preadv(fd, iovecs, count, offset) in a kernel worker and return at once.

        `iovecs` is the address of `count` struct iovec. The submission is handed to the
        kernel before this returns (so the kernel holds its own reference to the file from
        here on), and its completion appears in `reap` under `user_data`. Never more than
        `capacity` in flight: every submission slot is then free again when we reuse it.
        """
        before = self._sq_tail
        index = before & self._sq_mask
        _SQE.pack_into(self._sqes, index * _SQE.size, _OP_READV, _SQE_ASYNC, 0, fd, offset,
                       iovecs, count, 0, user_data)  # fmt: skip
        words = self._sq_words
        words[self._sq_array_at + index] = index
        self._sq_tail = tail = (before + 1) & 0xFFFFFFFF
        words[self._sq_tail_at] = tail
        for _ in range(_ENTER_RETRIES):
            if _syscall(_SYS_IO_URING_ENTER, self.fd, 1, 0, 0, None, 0) >= 0:
                return
            code = ctypes.get_errno()
            if code not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                break
        if words[self._sq_head_at] != tail:
            # Not consumed: take it back, or the next submission would carry it along and
            # its completion would come under a key nobody waits for.
            self._sq_tail = before
            words[self._sq_tail_at] = before
        raise OSError(code, f"io_uring_enter: {os.strerror(code)}")

    def ready(self) -> bool:
        """Whether completions are waiting to be reaped."""
        words = self._cq_words
        return bool(words[self._cq_head_at] != words[self._cq_tail_at])

    def reap(self) -> list[tuple[int, int]]:
        """Every completion waiting, as (user_data, result: bytes read or -errno)."""
        words = self._cq_words
        head = words[self._cq_head_at]
        tail = words[self._cq_tail_at]
        done: list[tuple[int, int]] = []
        ring, base, mask = self._cq_ring, self._cqes, self._cq_mask
        while head != tail:  # at most cq_entries apart: the kernel never overfills the ring
            user_data, result, _ = _CQE.unpack_from(ring, base + (head & mask) * _CQE.size)
            done.append((user_data, result))
            head = (head + 1) & 0xFFFFFFFF
        words[self._cq_head_at] = head
        return done

    def collect(self) -> None:
        """Let the kernel post the completions it has ready (cheap, never blocks).

        With COOP_TASKRUN they are posted when this thread enters the kernel; a thread that
        polls `ready` without making other syscalls calls this in between.
        """
        _syscall(_SYS_IO_URING_ENTER, self.fd, 0, 0, _ENTER_GETEVENTS, None, 0)

    def wait(self) -> None:
        """Block until at least one completion is waiting."""
        while not self.ready():
            result = _syscall(_SYS_IO_URING_ENTER, self.fd, 0, 1, _ENTER_GETEVENTS, None, 0)
            if result < 0 and ctypes.get_errno() not in (errno.EINTR, errno.EAGAIN):
                raise OSError(ctypes.get_errno(), "io_uring_enter(GETEVENTS)")

    def close(self) -> None:
        for view in ("_sq_words", "_cq_words"):
            words = self.__dict__.pop(view, None)
            if words is not None:
                words.release()
        for mapping in self._maps:
            mapping.close()
        self._maps.clear()
        if self.eventfd >= 0:
            os.close(self.eventfd)
            self.eventfd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_ring(entries: int) -> IoUring | None:
    """An io_uring, or None where the kernel or a sandbox refuses one (reads stay inline)."""
    try:
        return IoUring(entries)
    except OSError as exc:
        log.info("io_uring unavailable (%s): large reads run on the serving thread", exc)
        return None
