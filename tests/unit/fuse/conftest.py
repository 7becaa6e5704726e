from __future__ import annotations

import pytest

from tests.support import fuseclient
from tests.support.memoryfs import MemoryFilesystem
from vhostfs.fuse.server import FuseServer


@pytest.fixture
def memfs() -> MemoryFilesystem:
    return MemoryFilesystem()


@pytest.fixture
async def server(memfs: MemoryFilesystem) -> FuseServer:
    srv = FuseServer(memfs)
    await fuseclient.init(srv)
    return srv
