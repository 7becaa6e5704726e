"""Test-only launcher: serve a host directory READ-WRITE to one vhost-user frontend.

The product command line (`vhostfs virtiofs --shared-dir`) stays read-only until the Kata
passthrough mount is wired up; the VM tests of the write path run this instead:

    python -m tests.support.writable_daemon --sock S --dir D [--cache auto] [--writeback]

It serves `WritablePassthroughFilesystem(D)` as the FUSE root, logs to stderr, and exits
when the frontend disconnects or on SIGTERM/SIGINT (like the product daemon).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from vhostfs import daemon
from vhostfs.fs.passthrough_write import WritablePassthroughFilesystem
from vhostfs.fuse.server import FuseServer

log = logging.getLogger("writable_daemon")


def command(socket_path: Path | str, shared_dir: Path | str, *, cache: str = "auto",
            writeback: bool = False) -> list[str]:  # fmt: skip
    """argv for tests/vm's `start_share(..., command=...)`."""
    argv = [sys.executable, "-m", "tests.support.writable_daemon", "--sock", str(socket_path),
            "--dir", str(shared_dir), "--cache", cache]  # fmt: skip
    return [*argv, "--writeback"] if writeback else argv


async def run(sock: str, directory: str, cache: str, writeback: bool) -> None:
    fs = WritablePassthroughFilesystem(directory, cache, writeback=writeback)
    try:
        server = FuseServer(fs)
        listener = await daemon.listen_unix(sock)
        log.info("listening on %s, exporting %s READ-WRITE", sock, directory)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    await daemon.serve(listener, server)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(serve)
                async for signum in signals:
                    log.info("%s received", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        fs.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="writable_daemon", description=__doc__)
    parser.add_argument("--sock", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--cache", default="auto", choices=["none", "auto", "always"])
    parser.add_argument("--writeback", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    trio.run(run, args.sock, args.dir, args.cache, args.writeback)
    return 0


if __name__ == "__main__":
    sys.exit(main())
