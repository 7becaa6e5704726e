"""vhost-user wire types: request codes, flags, feature bits and payload records.

Spec: QEMU docs/interop/vhost-user.rst (protocol version 1), as observed with QEMU 7.2 in
reference/vhost-user-virtiofs.md sections 2-5. Every message is a 12-byte header (`Header`)
followed by `size` bytes of payload; integers are little-endian on x86-64. Each payload
layout is declared here once; `validate()` rejects values no frontend may send.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from rafs.records import Record
from vhostfs.errors import VhostUserProtocolError

VERSION: Final = 0x1
# A payload larger than this is garbage: the largest legal one is a full memory table
# (8 + 32 * 8 = 264 bytes) or a config-space request (12 + 256).
MAX_PAYLOAD: Final = 4096
# fds one message may carry (SET_MEM_TABLE sends one per region, up to 8 in QEMU).
MAX_FDS: Final = 32
# Regions we accept (GET_MAX_MEM_SLOTS): must never decrease over a connection.
MAX_MEM_SLOTS: Final = 32


class FrontendReq(enum.IntEnum):
    """Requests the frontend (QEMU) sends; numbers from vhost-user.rst."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class HeaderFlags(enum.IntFlag):
    VERSION_MASK = 0x3
    REPLY = 0x4
    NEED_REPLY = 0x8


class VirtioFeatures(enum.IntFlag):
    """Virtio feature bits (GET/SET_FEATURES) relevant to a virtio-fs backend."""

    RING_INDIRECT_DESC = 1 << 28
    RING_EVENT_IDX = 1 << 29
    PROTOCOL_FEATURES = 1 << 30  # vhost-user specific; QEMU 7.2 requires it
    VERSION_1 = 1 << 32
    RING_PACKED = 1 << 34


class ProtocolFeatures(enum.IntFlag):
    """vhost-user protocol feature bits (GET/SET_PROTOCOL_FEATURES)."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    REPLY_ACK = 1 << 3
    BACKEND_REQ = 1 << 5
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


# SET_VRING_KICK/CALL/ERR payload: bits 0-7 queue index, bit 8 "no fd: poll instead".
VRING_IDX_MASK: Final = 0xFF
VRING_NOFD_MASK: Final = 1 << 8
# SET_VRING_ADDR flags bit 0: log used-ring writes (migration only; we never offer LOG_ALL).
VRING_ADDR_F_LOG: Final = 1


@dataclass(frozen=True, slots=True)
class Header(Record, fmt="<III"):
    request: int  # FrontendReq code; a reply repeats it
    flags: int  # HeaderFlags
    size: int  # payload bytes that follow


@dataclass(frozen=True, slots=True)
class U64(Record, fmt="<Q"):
    value: int


@dataclass(frozen=True, slots=True)
class VringState(Record, fmt="<II"):
    index: int  # queue index
    num: int  # size, base index (split) or packed state, or enable flag

    def validate(self) -> None:
        _check_queue_index(self.index)


@dataclass(frozen=True, slots=True)
class VringAddr(Record, fmt="<IIQQQQ"):
    index: int  # queue index
    flags: int  # VRING_ADDR_F_LOG
    desc: int  # frontend virtual address of the descriptor table / packed ring
    used: int  # ... of the used ring / device event suppression area
    avail: int  # ... of the avail ring / driver event suppression area
    log: int  # guest physical address for used-ring logging (ignored)

    def validate(self) -> None:
        _check_queue_index(self.index)
        # virtio 1.x alignment: descriptors 16, used ring 4, avail ring 2 bytes.
        if self.desc % 16 or self.used % 4 or self.avail % 2:
            raise VhostUserProtocolError(f"misaligned ring addresses for queue {self.index}")


@dataclass(frozen=True, slots=True)
class MemRegion(Record, fmt="<QQQQ"):
    guest_phys_addr: int  # start of the region in guest physical address space
    memory_size: int  # bytes
    userspace_addr: int  # start in the frontend's virtual address space
    mmap_offset: int  # offset of the region inside its fd

    def validate(self) -> None:
        if self.memory_size == 0:
            raise VhostUserProtocolError("memory region of size 0")
        for base in (self.guest_phys_addr, self.userspace_addr, self.mmap_offset):
            if base + self.memory_size > 1 << 64:
                raise VhostUserProtocolError("memory region wraps around the address space")


@dataclass(frozen=True, slots=True)
class MemTableHeader(Record, fmt="<I4x"):
    nregions: int  # MemRegion records follow


@dataclass(frozen=True, slots=True)
class SingleMemRegion(Record, fmt="<8xQQQQ"):
    """ADD_MEM_REG / REM_MEM_REG payload: 8 bytes of padding, then one region."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int

    def region(self) -> MemRegion:
        return MemRegion(
            self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset
        )


def decode_mem_table(payload: bytes) -> list[MemRegion]:
    """SET_MEM_TABLE payload: a count, then that many regions (QEMU sends only `n`)."""
    count = MemTableHeader.unpack_from(payload).nregions
    if count == 0 or count > MAX_MEM_SLOTS:
        raise VhostUserProtocolError(f"memory table with {count} regions")
    if len(payload) < MemTableHeader.SIZE + count * MemRegion.SIZE:
        raise VhostUserProtocolError(f"memory table of {count} regions in {len(payload)} bytes")
    regions = [
        MemRegion.unpack_from(payload, MemTableHeader.SIZE + i * MemRegion.SIZE)
        for i in range(count)
    ]
    for region in regions:
        region.validate()
    return regions


def _check_queue_index(index: int) -> None:
    if index > VRING_IDX_MASK:
        raise VhostUserProtocolError(f"queue index {index} out of range")


# Payload size each request must carry exactly (None: variable, checked by its decoder).
PAYLOAD_SIZES: Final[dict[int, int | None]] = {
    FrontendReq.GET_FEATURES: 0,
    FrontendReq.SET_FEATURES: U64.SIZE,
    FrontendReq.SET_OWNER: 0,
    FrontendReq.RESET_OWNER: 0,
    FrontendReq.SET_MEM_TABLE: None,
    FrontendReq.SET_VRING_NUM: VringState.SIZE,
    FrontendReq.SET_VRING_ADDR: VringAddr.SIZE,
    FrontendReq.SET_VRING_BASE: VringState.SIZE,
    FrontendReq.GET_VRING_BASE: VringState.SIZE,
    FrontendReq.SET_VRING_KICK: U64.SIZE,
    FrontendReq.SET_VRING_CALL: U64.SIZE,
    FrontendReq.SET_VRING_ERR: U64.SIZE,
    FrontendReq.GET_PROTOCOL_FEATURES: 0,
    FrontendReq.SET_PROTOCOL_FEATURES: U64.SIZE,
    FrontendReq.GET_QUEUE_NUM: 0,
    FrontendReq.SET_VRING_ENABLE: VringState.SIZE,
    FrontendReq.SET_BACKEND_REQ_FD: 0,
    FrontendReq.GET_MAX_MEM_SLOTS: 0,
    FrontendReq.ADD_MEM_REG: SingleMemRegion.SIZE,
    FrontendReq.REM_MEM_REG: SingleMemRegion.SIZE,
    FrontendReq.RESET_DEVICE: 0,
}

# How many fds each request carries: exact count, or a (min, max) range.
FD_COUNTS: Final[dict[int, tuple[int, int]]] = {
    FrontendReq.SET_MEM_TABLE: (1, MAX_MEM_SLOTS),
    FrontendReq.ADD_MEM_REG: (1, 1),
    FrontendReq.SET_VRING_KICK: (0, 1),
    FrontendReq.SET_VRING_CALL: (0, 1),
    FrontendReq.SET_VRING_ERR: (0, 1),
    FrontendReq.SET_BACKEND_REQ_FD: (1, 1),
}
