"""A 1 MiB guest memory (one memfd region) shared by the ring tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vhostfs.vhost_user.messages import MemRegion
from vhostfs.virtio.memory import GuestMemory

MEM = 1 << 20  # bytes of guest memory; gpa == offset in the memfd


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    fd = os.memfd_create("guest")
    os.ftruncate(fd, MEM)
    memory = GuestMemory()
    memory.set_table([MemRegion(0, MEM, 0x7000_0000, 0)], [fd])
    os.close(fd)
    yield memory
    memory.clear()
