"""Test launcher: `vhostfs virtiofs --bootstrap ... --config ...` plus RAFS prefetch and a
metrics line at exit, until the command line does both itself.

    python -m tests.support.rafs_daemon [--prefetch-file PATH ...] -- <vhostfs virtiofs args>

It parses the real command line (`vhostfs.cli.parse_args`), opens the image with the real
`open_rafs`, attaches it to the pseudo root and serves with the real `daemon.serve`; the
only additions are `fs.prefetch()` started in the nursery right after attaching (as the
daemon's owner is to do) and, at exit, one log line `metrics: {json}` with `fs.metrics()`.
Logs "prefetch finished" when the prefetch returns, which tests wait for.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

import trio

from vhostfs import cli, daemon
from vhostfs.fs.factory import open_rafs
from vhostfs.fs.pseudo import PseudoFilesystem
from vhostfs.fuse.server import FuseServer
from vhostfs.virtiofs import DEFAULT_WORKERS

log = logging.getLogger("rafs_daemon")


async def run(config: cli.DaemonConfig, prefetch_files: list[str]) -> None:
    assert config.bootstrap is not None
    text = None
    if config.config:
        text = await trio.Path(config.config).read_text(encoding="utf-8")
    fs = open_rafs(config.bootstrap, config=text, localfs_dir=config.localfs_dir,
                   limiter=trio.CapacityLimiter(DEFAULT_WORKERS), prefetch_files=prefetch_files)
    root = PseudoFilesystem()
    await root.attach(config.virtual_mountpoint, fs, "Rafs")
    server = FuseServer(root)
    listener = await daemon.listen_unix(config.sock)
    log.info("listening on %s", config.sock)
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def prefetch() -> None:
                    await fs.prefetch()
                    log.info("prefetch finished")

                async def serve() -> None:
                    await daemon.serve(listener, server, workers=config.workers,
                                       packed=config.packed)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(prefetch)
                nursery.start_soon(serve)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        log.info("metrics: %s", json.dumps(fs.metrics(), sort_keys=True))
        with trio.CancelScope(shield=True):
            await fs.chunks.aclose()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefetch-file", action="append", default=[])
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    config = cli.parse_args(rest)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(run, config, args.prefetch_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
