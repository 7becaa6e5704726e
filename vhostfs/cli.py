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

from backends.errors import BackendError
from rafs import RafsError
from vhostfs import daemon
from vhostfs.errors import VhostfsError
from vhostfs.fs.factory import open_passthrough, open_rafs
from vhostfs.fs.pseudo import PseudoFilesystem
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
    shared_dir: str | None = None  # host directory exported read-only
    bootstrap: str | None = None  # RAFS image metadata to serve
    config: str | None = None  # nydusd storage configuration file for the RAFS image
    localfs_dir: str | None = None  # nydusd's shortcut: blobs (and their cache) in this dir
    virtual_mountpoint: str = "/"  # where the startup filesystem is attached
    log_level: str = "info"
    cache: str = "auto"  # guest caching of the shared directory (virtiofsd's cache=)
    workers: int = DEFAULT_WORKERS  # requests per queue that may wait at once
    packed: bool = True  # offer packed rings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vhostfs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    virtiofs = commands.add_parser("virtiofs", help="serve a vhost-user-fs device")
    virtiofs.add_argument("--sock", required=True, help="vhost-user socket to listen on")
    virtiofs.add_argument("--shared-dir", "-s", help="host directory to export (read-only)")
    virtiofs.add_argument("--bootstrap", "-B", help="RAFS metadata file of the image to serve")
    virtiofs.add_argument("--config", "-C", help="nydusd storage configuration (JSON or TOML)")
    virtiofs.add_argument("--localfs-dir", "-D", help="blobs (and their cache) in this directory")
    virtiofs.add_argument(
        "--virtual-mountpoint", "-m", default="/", help="where the filesystem is attached"
    )
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--thread-pool-size must be at least 1")
    if args.shared_dir and args.bootstrap:
        parser.error("--shared-dir and --bootstrap are mutually exclusive")
    if args.bootstrap and bool(args.config) == bool(args.localfs_dir):
        parser.error("--bootstrap needs exactly one of --config and --localfs-dir")
    return DaemonConfig(
        sock=args.sock,
        shared_dir=args.shared_dir,
        bootstrap=args.bootstrap,
        config=args.config,
        localfs_dir=args.localfs_dir,
        virtual_mountpoint=args.virtual_mountpoint,
        log_level=args.log_level,
        cache=args.cache,
        workers=args.workers,
        packed=args.packed,
    )


async def startup_filesystem(config: DaemonConfig) -> PseudoFilesystem:
    """The pseudo root with the filesystem the command line names attached to it."""
    root = PseudoFilesystem()
    if config.shared_dir:
        fs = open_passthrough(config.shared_dir, cache=config.cache)
        await root.attach(config.virtual_mountpoint, fs, "PassthroughFs")
    elif config.bootstrap:
        text = None
        if config.config:
            text = await trio.Path(config.config).read_text(encoding="utf-8")
        limiter = trio.CapacityLimiter(DEFAULT_WORKERS)
        image = open_rafs(
            config.bootstrap, config=text, localfs_dir=config.localfs_dir, limiter=limiter
        )
        await root.attach(config.virtual_mountpoint, image, "Rafs")
    return root


async def run(config: DaemonConfig) -> None:
    """Serve until the frontend leaves or SIGTERM/SIGINT arrives."""
    server = FuseServer(await startup_filesystem(config))
    listener = await daemon.listen_unix(config.sock)
    log.info("listening on %s", config.sock)
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
    except (OSError, VhostfsError, RafsError, BackendError) as exc:
        log.error("Error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
