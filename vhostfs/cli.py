"""The executables: `vhostfs virtiofs ...` and the nydusd drop-in `vhostfs-nydusd virtiofs ...`.

reference/nydusd-interface.md section 1. `config.parse_args` turns argv into a DaemonConfig;
this module sets up logging, RLIMIT_NOFILE and the start-up filesystem, and runs
`daemon.run_daemon`. Exit status (nydusd's): 0 after SIGTERM/SIGINT, `PUT
/api/v1/daemon/exit` or (without --apisock) the frontend leaving; 1 with "Error: ..." on
stderr when the daemon cannot start (bad config, image, directory, socket); 2 for usage
errors, before any socket exists.

Never daemonizes and keeps stdout/stderr open for the whole life of the process: Kata's Go
runtime takes EOF on our stdout as "the daemon died" and stops the VM.

Shutdown deadline: Kata's Go runtime SIGKILLs 5 s after SIGTERM. Once shutdown starts, a
watchdog thread ends the process after SHUTDOWN_DEADLINE seconds even if a ring is still
draining a stuck request, so the API socket (removed first) and the exit status are ours.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import resource
import sys
import threading
from collections.abc import Sequence
from typing import Final

import trio

from backends.errors import BackendError
from backends.nydusconfig import parse_config
from rafs import RafsError
from vhostfs import daemon
from vhostfs.api.mounts import PASSTHROUGH, RAFS, MountRecord, MountTable, open_image
from vhostfs.config import DaemonConfig, parse_args
from vhostfs.errors import VhostfsError
from vhostfs.fs.factory import open_passthrough

log = logging.getLogger("vhostfs")

LOG_LEVELS: Final = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
                     "warn": logging.WARNING, "error": logging.ERROR}
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SHUTDOWN_DEADLINE: Final = 4.5  # seconds; below Kata's 5 s SIGTERM -> SIGKILL grace
FILE_MAX_RESERVED: Final = 16384  # nydusd keeps this many of fs.file-max for others
RLIMIT_CAP: Final = 1_000_000
STARTUP_ERRORS: Final = (OSError, ValueError, VhostfsError, RafsError, BackendError)


class StartupError(Exception):
    """The daemon cannot start; the message is printed as "Error: <message>"."""


# -- process set-up -------------------------------------------------------------------------


def setup_logging(config: DaemonConfig) -> None:
    handler: logging.Handler
    if config.log_file and config.log_rotation_size:
        handler = logging.handlers.RotatingFileHandler(
            config.log_file, maxBytes=config.log_rotation_size << 20, backupCount=10)
    elif config.log_file:
        handler = logging.FileHandler(config.log_file, mode="a")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LOG_LEVELS[config.log_level])
    for warning in config.warnings:
        log.warning("%s", warning)


def rlimit_target(wanted: int, soft: int, file_max: int) -> int:
    """nydusd's rule: min(wanted, max(current soft, min(file-max - 16384, 1 000 000)))."""
    if file_max < 2 * FILE_MAX_RESERVED:
        raise StartupError(f"fs.file-max {file_max} is below {2 * FILE_MAX_RESERVED}")
    return min(wanted, max(soft, min(file_max - FILE_MAX_RESERVED, RLIMIT_CAP)))


def adjust_rlimit_nofile(wanted: int) -> None:
    if wanted == 0:
        return
    with open("/proc/sys/fs/file-max") as file:
        file_max = int(file.read().split()[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = rlimit_target(wanted, soft, file_max)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, PermissionError):
        # Unprivileged: raise the soft limit as far as the hard one allows. nydusd fails
        # here; an unprivileged vhostfs serving a test VM should not.
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    log.info("RLIMIT_NOFILE set to %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _arm_deadline() -> None:
    timer = threading.Timer(SHUTDOWN_DEADLINE, _give_up)
    timer.daemon = True
    timer.start()


def _give_up() -> None:
    log.error("shutdown took longer than %.1f s; exiting anyway", SHUTDOWN_DEADLINE)
    logging.shutdown()
    os._exit(0)


# -- the start-up filesystem ----------------------------------------------------------------


def read_prefetch_list(path: str) -> list[str]:
    """nydusd's --prefetch-files: absolute paths, one per line, blank lines ignored."""
    with open(path, encoding="utf-8") as file:
        entries = [line.strip() for line in file if line.strip()]
    bad = [entry for entry in entries if not entry.startswith("/")]
    if bad:
        raise StartupError(f"invalid prefetch file list: {bad[0]!r} is not absolute")
    return entries


async def attach_startup(config: DaemonConfig, mounts: MountTable) -> None:
    """Attach --shared-dir or --bootstrap at --virtual-mountpoint (INIT state)."""
    mountpoint = config.virtual_mountpoint
    if config.shared_dir:
        fs = open_passthrough(config.shared_dir, cache=config.cache, writable=config.writable)
        kind, source, storage = PASSTHROUGH, config.shared_dir, None
    elif config.bootstrap:
        text = None
        if config.config:
            text = await trio.Path(config.config).read_text(encoding="utf-8")
        files = read_prefetch_list(config.prefetch_files) if config.prefetch_files else None
        storage = parse_config(text) if text is not None else None
        fs = open_image(config.bootstrap, config=text, localfs_dir=config.localfs_dir,
                        limiter=mounts.limiter, prefetch_files=files)
        kind, source = RAFS, config.bootstrap
    else:
        return
    record = await mounts.root.attach(mountpoint, fs, kind)
    mounts.adopt(MountRecord(record.path, kind, fs, source, storage=storage))


# -- entry points ---------------------------------------------------------------------------


async def run(config: DaemonConfig) -> None:
    async def startup(mounts: MountTable) -> None:
        await attach_startup(config, mounts)

    await daemon.run_daemon(config, startup, on_stopping=_arm_deadline)


def run_main(argv: Sequence[str], *, prog: str, nydusd: bool) -> int:
    config = parse_args(argv, prog=prog, nydusd=nydusd)
    try:
        setup_logging(config)
        log.info("Program Version: vhostfs, nydusd-compatible virtiofs daemon (%s)", prog)
        adjust_rlimit_nofile(config.rlimit_nofile)
        trio.run(run, config)
    except (StartupError, *STARTUP_ERRORS, BaseExceptionGroup) as exc:
        cause = startup_error(exc)
        if cause is None:
            raise
        log.debug("start-up failed", exc_info=True)
        print(f"Error: {cause}", file=sys.stderr, flush=True)
        return 1
    return 0


def startup_error(exc: BaseException) -> BaseException | None:
    """The start-up error inside `exc` (trio wraps task errors in groups), if that is all."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [startup_error(e) for e in exc.exceptions]
        return leaves[0] if leaves and all(leaf is not None for leaf in leaves) else None
    return exc if isinstance(exc, (StartupError, *STARTUP_ERRORS)) else None


def main(argv: Sequence[str] | None = None) -> int:
    """`vhostfs virtiofs ...`: our own command line (see vhostfs.config)."""
    return run_main(sys.argv[1:] if argv is None else argv, prog="vhostfs", nydusd=False)


def nydusd_main(argv: Sequence[str] | None = None) -> int:
    """`vhostfs-nydusd virtiofs ...`: exactly nydusd's argv, for Kata's virtio_fs_daemon."""
    return run_main(sys.argv[1:] if argv is None else argv, prog="vhostfs-nydusd", nydusd=True)


if __name__ == "__main__":
    sys.exit(main())
