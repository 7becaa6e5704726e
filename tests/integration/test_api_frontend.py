"""Runtime mounts while a guest reads: the API attaches and detaches, the frontend reads.

The daemon runs in this trio loop with its API socket; the test frontend (tests/support,
playing QEMU 7.2 in a worker thread) reads through the virtio-fs root exactly where Kata's
guest looks: `/containers/...` (passthrough) and `/rafs/<cid>/lowerdir/...` (RAFS).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.test_api_daemon import rafs_body, start_daemon
from tests.support.fixtures import V6_FILES
from tests.support.frontend import Frontend, FrontendOptions
from tests.support.fuse_driver import FuseDriver, FuseError
from vhostfs.fuse import abi
from vhostfs.fuse.filesystem import ROOT_INO

ENOENT = 2


def lookup_path(fuse: FuseDriver, *names: bytes) -> int:
    node = ROOT_INO
    for name in names:
        node = fuse.lookup(node, name).nodeid
    return node


def read_file(fuse: FuseDriver, node: int, size: int = 1 << 20) -> bytes:
    fh = fuse.open(node).fh
    try:
        return fuse.read(node, fh, 0, size)
    finally:
        fuse.release(node, fh)


RAFS_PATH = (b"rafs", b"c1", b"lowerdir")
SAMPLE = min(V6_FILES)


async def test_guest_reads_api_mounts_and_survives_detach(tmp_path: Path,
                                                          nursery: trio.Nursery) -> None:
    share = tmp_path / "shared"
    (share / "c1").mkdir(parents=True)
    (share / "c1" / "hostname").write_bytes(b"sandbox\n")
    running, _, config = await start_daemon(tmp_path, nursery)
    assert config.apisock is not None
    transport = httpx.AsyncHTTPTransport(uds=config.apisock)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:

        async def mount(mountpoint: str, body: dict[str, object]) -> None:
            response = await client.post("/api/v1/mount", params={"mountpoint": mountpoint},
                                         content=json.dumps(body))
            assert response.status_code == 204, response.text

        await mount("/containers", {"fs_type": "passthrough_fs", "source": str(share),
                                    "config": ""})
        await mount("/rafs/c1/lowerdir", rafs_body(tmp_path))

        frontend = await trio.to_thread.run_sync(Frontend.connect, config.sock,
                                                 FrontendOptions())
        with frontend:  # close() only closes fds: fine on this thread
            fuse = FuseDriver(frontend)

            def first_reads() -> tuple[bytes, str]:
                fuse.init()
                host = read_file(fuse, lookup_path(fuse, b"containers", b"c1", b"hostname"))
                image = read_file(fuse, lookup_path(fuse, *RAFS_PATH, SAMPLE))
                return host, hashlib.sha256(image).hexdigest()

            host, digest = await trio.to_thread.run_sync(first_reads)
            assert host == b"sandbox\n"
            assert digest == V6_FILES[SAMPLE][1]

            # Detach the share while the guest keeps reading the image.
            rafs_node = await trio.to_thread.run_sync(lookup_path, fuse, *RAFS_PATH, SAMPLE)
            digests: list[str] = []

            def keep_reading() -> None:
                for _ in range(20):
                    digests.append(hashlib.sha256(read_file(fuse, rafs_node)).hexdigest())

            async with trio.open_nursery() as readers:
                readers.start_soon(trio.to_thread.run_sync, keep_reading)
                deleted = await client.delete("/api/v1/mount",
                                              params={"mountpoint": "/containers"})
                assert deleted.status_code == 204
            assert digests == [V6_FILES[SAMPLE][1]] * 20

            def after_detach() -> int:
                with pytest.raises(FuseError) as gone:
                    lookup_path(fuse, b"containers")
                return gone.value.errno

            assert await trio.to_thread.run_sync(after_detach) == ENOENT

            # And the other way round: the image goes, a new share comes.
            assert (await client.delete("/api/v1/mount",
                                        params={"mountpoint": "/rafs/c1/lowerdir"})
                    ).status_code == 204
            await mount("/containers", {"fs_type": "passthrough", "source": str(share),
                                        "config": ""})

            def final() -> tuple[bytes, int]:
                host = read_file(fuse, lookup_path(fuse, b"containers", b"c1", b"hostname"))
                with pytest.raises(FuseError) as gone:
                    lookup_path(fuse, *RAFS_PATH)
                return host, gone.value.errno

            host, errno = await trio.to_thread.run_sync(final)
            assert host == b"sandbox\n"
            assert errno == ENOENT
        assert (await client.get("/api/v1/daemon")).json()["state"] == "RUNNING"
    running.stop()


async def test_writable_share_through_the_api(tmp_path: Path, nursery: trio.Nursery) -> None:
    """The Kata share is writable (container upper dirs live there)."""
    share = tmp_path / "rw"
    share.mkdir()
    running, _, config = await start_daemon(tmp_path, nursery)
    assert config.apisock is not None
    transport = httpx.AsyncHTTPTransport(uds=config.apisock)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        response = await client.post("/api/v1/mount", params={"mountpoint": "/containers"},
                                     content=json.dumps({"fs_type": "passthrough_fs",
                                                         "source": str(share), "config": ""}))
        assert response.status_code == 204

    def guest() -> None:
        with Frontend.connect(config.sock, FrontendOptions()) as frontend:
            fuse = FuseDriver(frontend)
            fuse.init()
            containers = lookup_path(fuse, b"containers")
            args = abi.MkdirIn(0o755, 0o022).pack() + b"upper\0"
            reply = fuse.call(abi.Opcode.MKDIR, containers, args,
                              (abi.OutHeader.SIZE, abi.EntryOut.SIZE))
            assert reply.ok().header.error == 0

    await trio.to_thread.run_sync(guest)
    assert (share / "upper").is_dir()
    running.stop()
