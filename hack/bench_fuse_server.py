"""Micro-benchmark: µs per request through FuseServer.handle against MemoryFilesystem.

    .venv/bin/python -m hack.bench_fuse_server [count]

Wall time suffers when other work shares the CPUs; the CPU time per request is the
steadier figure. Each request builds its ChainReader/ChainWriter over preallocated
buffers shaped like the Linux guest's (header and arguments in separate descriptors), as
the queue worker does.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import trio

from tests.support import fuseclient
from tests.support.memoryfs import MemoryFilesystem
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import Filesystem, ReadOnlyFilesystem
from vhostfs.fuse.server import FuseServer
from vhostfs.virtio.buffers import ChainReader, ChainWriter

Op = abi.Opcode


async def bench(server: FuseServer, name: str, readable: list[bytes], writable: list[int],
                count: int) -> None:  # fmt: skip
    rbufs = [memoryview(bytearray(b)) for b in readable]
    wbufs = [memoryview(bytearray(n)) for n in writable]
    handle = server.handle
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        used = await handle(ChainReader(rbufs), ChainWriter(wbufs))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert abi.OutHeader.unpack_from(wbufs[0]).error == 0, name
    print(f"{name:26} {elapsed / count * 1e6:7.2f} µs/request wall "
          f"{cpu / count * 1e6:7.2f} µs CPU (used {used})")


async def main(count: int) -> None:
    mem = MemoryFilesystem()
    mem.add_file(b"file", bytes(1 << 20))
    print("MemoryFilesystem")
    await run(mem, count)
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(os.path.join(tmp, "file"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, os.urandom(1 << 20))
        os.close(fd)
        passthrough = PassthroughFilesystem(tmp, "auto")
        print("PassthroughFilesystem (read-only wrapper)")
        await run(ReadOnlyFilesystem(passthrough), count)
        passthrough.close()


async def run(fs: Filesystem, count: int) -> None:
    server = FuseServer(fs)
    await fuseclient.init(server)
    looked = await fuseclient.call(server, Op.LOOKUP, 1, b"file\0")
    ino = abi.EntryOut.unpack_from(looked.payload).nodeid
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
    await server.reset()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
