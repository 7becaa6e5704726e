"""Command line: `vhostfs virtiofs --sock PATH --shared-dir DIR`, spelled as nydusd spells it.

reference/nydusd-interface.md section 1. Parsing produces a frozen `DaemonConfig`; `run`
turns it into a running daemon. Exit status: 0 after SIGTERM/SIGINT or when the frontend
leaves, 1 when the daemon cannot start, 2 for usage errors (argparse's own convention, which
nydusd's clap parser shares).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio

from vhostfs import daemon
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fuse.filesystem import ReadOnlyFilesystem
from vhostfs.fuse.server import FuseServer
from vhostfs.virtiofs import DEFAULT_WORKERS

log = logging.getLogger("vhostfs")

LOG_LEVELS: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
CACHE_POLICIES: Final = ("none", "auto", "always")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    sock: str  # vhost-user socket path we listen on
    shared_dir: str  # host directory exported read-only
    log_level: str = "info"
    cache: str = "auto"  # guest caching of the shared directory (virtiofsd's cache=)
    workers: int = DEFAULT_WORKERS  # requests per queue that may wait at once
    packed: bool = True  # offer packed rings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vhostfs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    virtiofs = commands.add_parser("virtiofs", help="serve a vhost-user-fs device")
    virtiofs.add_argument("--sock", required=True, help="vhost-user socket to listen on")
    virtiofs.add_argument("--shared-dir", required=True, help="host directory to export")
    virtiofs.add_argument("--log-level", choices=sorted(LOG_LEVELS), default="info")
    virtiofs.add_argument(
        "--cache",
        choices=CACHE_POLICIES,
        default="auto",
        help="how long the guest may cache entries, attributes and data (virtiofsd's cache=)",
    )
    virtiofs.add_argument(
        "--thread-pool-size",
        dest="workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="requests per queue that may be in progress at once",
    )
    virtiofs.add_argument(
        "--no-packed", dest="packed", action="store_false", help="do not offer packed rings"
    )
    return parser


def parse_args(argv: Sequence[str]) -> DaemonConfig:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        build_parser().error("--thread-pool-size must be at least 1")
    return DaemonConfig(
        sock=args.sock,
        shared_dir=args.shared_dir,
        log_level=args.log_level,
        cache=args.cache,
        workers=args.workers,
        packed=args.packed,
    )


async def run(config: DaemonConfig) -> None:
    """Serve until the frontend leaves or SIGTERM/SIGINT arrives."""
    fs = ReadOnlyFilesystem(PassthroughFilesystem(config.shared_dir, cache=config.cache))
    server = FuseServer(fs)
    listener = await daemon.listen_unix(config.sock)
    log.info("listening on %s, exporting %s read-only", config.sock, config.shared_dir)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                await daemon.serve(listener, server, workers=config.workers, packed=config.packed)
                nursery.cancel_scope.cancel()

            nursery.start_soon(serve)
            async for signum in signals:
                log.info("%s received, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=LOG_LEVELS[config.log_level],
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        trio.run(run, config)
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
