"""Micro-benchmark: µs per request through FuseServer.handle against MemoryFilesystem.

    .venv/bin/python -m hack.bench_fuse_server [count]

Each request builds its ChainReader/ChainWriter over preallocated buffers shaped like the
Linux guest's (header and arguments in separate descriptors), as the queue worker does.
"""

from __future__ import annotations

import sys
import time

import trio

from tests.support import fuseclient
from tests.support.memoryfs import MemoryFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.server import FuseServer
from vhostfs.virtio.buffers import ChainReader, ChainWriter

Op = abi.Opcode


async def bench(server: FuseServer, name: str, readable: list[bytes], writable: list[int],
                count: int) -> None:  # fmt: skip
    rbufs = [memoryview(bytearray(b)) for b in readable]
    wbufs = [memoryview(bytearray(n)) for n in writable]
    handle = server.handle
    start = time.perf_counter()
    for _ in range(count):
        used = await handle(ChainReader(rbufs), ChainWriter(wbufs))
    elapsed = time.perf_counter() - start
    assert abi.OutHeader.unpack_from(wbufs[0]).error == 0, name
    print(f"{name:28} {elapsed / count * 1e6:7.2f} µs/request  (used {used})")


async def main(count: int) -> None:
    fs = MemoryFilesystem()
    server = FuseServer(fs)
    await fuseclient.init(server)
    ino = fs.add_file(b"file", bytes(1 << 20))
    opened = await fuseclient.call(server, Op.OPEN, ino, abi.OpenIn(0, 0).pack())
    fh = abi.OpenOut.unpack(opened.payload).fh
    hdr = fuseclient.in_header
    await bench(server, "GETATTR", [hdr(Op.GETATTR, ino, 16), bytes(16)], [16, 104], count)
    await bench(server, "LOOKUP", [hdr(Op.LOOKUP, 1, 5), b"file\0"], [16, 128], count)
    read = abi.ReadIn(fh, 8192, 4096, 0, 0, 0, 0).pack()
    await bench(server, "READ 4 KiB", [hdr(Op.READ, ino, 40), read], [16, 4096], count)
    big = abi.ReadIn(fh, 0, 1 << 17, 0, 0, 0, 0).pack()
    await bench(server, "READ 128 KiB (32 pages)", [hdr(Op.READ, ino, 40), big],
                [16] + [4096] * 32, count // 10)  # fmt: skip
    fs.forget(ino, 1 << 40)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
