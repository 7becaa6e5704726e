"""argv -> a frozen, validated DaemonConfig, spelled as `nydusd virtiofs` spells it.

reference/nydusd-interface.md sections 1.2-1.4. Both executables parse with this module:
`vhostfs` (our own command line) and `vhostfs-nydusd` (the drop-in Kata's
`virtio_fs_daemon` points at, accepting nydusd's argv). They differ in two places only,
chosen by `parse_args(..., nydusd=True)`:

=====================  =================================  ==================================
flag                   vhostfs                            vhostfs-nydusd
=====================  =================================  ==================================
--thread-pool-size N   requests in flight per queue       virtiofsd's thread count, which
                       (our worker count, as before)      Kata ships as a default extra
                                                          arg: warned about and ignored
--shared-dir DIR       exported read-only                 writable (nydusd's passthrough)
=====================  =================================  ==================================

`--workers N` sets the worker count in both; `--writable`/`--read-only` override the
shared directory's default in both.

Deliberate differences from nydusd on the command line:

* A repeated valued flag: the last one wins. nydusd refuses ("cannot be used multiple
  times"), which breaks the debugging recipe of Kata's own docs (Kata passes `--log-level
  info` and the user adds `--log-level debug` through `virtio_fs_extra_args`).
* virtiofsd options that Kata ships as `virtio_fs_extra_args` defaults (`--thread-pool-size=1`,
  `--announce-submounts`, `-o announce_submounts`, any `-o ...`, and a few other virtiofsd
  switches) are accepted with a warning instead of failing the sandbox.
* Other unknown flags are usage errors (exit status 2, no socket created), as upstream.
  Long options must be spelled in full (no argparse abbreviations; clap has none either).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from vhostfs.virtiofs import DEFAULT_POLL_US, DEFAULT_WORKERS

LOG_LEVELS: Final = ("trace", "debug", "info", "warn", "error")
CACHE_POLICIES: Final = ("none", "auto", "always", "never")  # never: virtiofsd's name for none
DEFAULT_RLIMIT_NOFILE: Final = 1_000_000
SUBCOMMANDS: Final = ("virtiofs",)
MAX_POLL_US: Final = 10_000  # polling longer than this only burns the core

# virtiofsd switches (no value) that Kata users put in virtio_fs_extra_args; we warn.
VIRTIOFSD_SWITCHES: Final = (
    "--announce-submounts",
    "--xattr",
    "--posix-acl",
    "--allow-direct-io",
    "--killpriv-v2",
    "--no-killpriv-v2",
    "--writeback",
    "--no-readdirplus",
    "--security-label",
    "--syslog",
)
# virtiofsd options with a value (always written --opt=value by Kata); we warn.
VIRTIOFSD_VALUED: Final = ("--sandbox", "--seccomp", "--inode-file-handles", "--modcaps")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon needs from its command line (validated)."""

    sock: str  # vhost-user socket path we listen on
    apisock: str | None = None  # HTTP API socket; None: no API, exit when the VMM leaves
    shared_dir: str | None = None  # startup passthrough mount
    bootstrap: str | None = None  # startup RAFS mount: the image's metadata file
    config: str | None = None  # nydusd storage configuration file for --bootstrap
    localfs_dir: str | None = None  # nydusd's shortcut: blobs (and their cache) in this dir
    prefetch_files: str | None = None  # file listing absolute image paths to prefetch
    virtual_mountpoint: str = "/"  # where the startup filesystem is attached
    log_level: str = "info"
    log_file: str | None = None  # already with nydusd's ".log" rule applied
    log_rotation_size: int = 0  # MiB; 0 = never rotate
    rlimit_nofile: int = DEFAULT_RLIMIT_NOFILE  # 0 = leave RLIMIT_NOFILE alone
    id: str | None = None  # echoed in DaemonInfo
    supervisor: str | None = None  # echoed in DaemonInfo; no upgrade manager in virtio-fs
    hybrid_mode: bool = True  # nydusd's inverted flag: absent = True (see --hybrid-mode)
    dedup_db: str | None = None  # accepted, not implemented
    cache: str = "auto"  # guest caching of passthrough mounts (virtiofsd's cache=)
    workers: int = DEFAULT_WORKERS  # requests per queue that may wait at once
    packed: bool = True  # offer packed rings
    poll_us: int = DEFAULT_POLL_US  # longest a queue polls for the next request (0: never)
    writable: bool = False  # the --shared-dir startup mount accepts writes
    warnings: tuple[str, ...] = ()  # to log once logging is set up (ignored flags)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Usage errors: message on stderr, exit status 2 (clap's and argparse's convention)."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str, *, nydusd: bool) -> argparse.ArgumentParser:
    """One flat parser: nydusd accepts its global flags before or after `virtiofs`."""
    p = _Parser(prog=prog, allow_abbrev=False,
                description="virtio-fs (vhost-user) daemon serving RAFS images and directories")
    p.add_argument("command", choices=SUBCOMMANDS, help="the daemon role (only virtiofs)")
    p.add_argument("--version", "-V", action="store_true", help="print build information")
    p.add_argument("--sock", help="vhost-user socket to listen on (required)")
    p.add_argument("--apisock", "-A", help="HTTP API unix socket")
    p.add_argument("--config", "-C", help="nydusd RAFS configuration (JSON v1/v2, TOML v2)")
    p.add_argument("--bootstrap", "-B", help="RAFS metadata file to mount at start-up")
    p.add_argument("--localfs-dir", "-D", help="blobs (and their cache) in this directory")
    p.add_argument("--shared-dir", "-s", help="host directory to mount at start-up")
    p.add_argument("--prefetch-files", help="file listing absolute image paths to prefetch")
    p.add_argument("--virtual-mountpoint", "-m", default="/",
                   help="where the start-up filesystem is attached (default /)")
    p.add_argument("--log-level", "-l", choices=LOG_LEVELS, default="info")
    p.add_argument("--log-file", "-L", help="append the log to this file instead of stderr")
    p.add_argument("--log-rotation-size", type=int, default=0, metavar="MIB",
                   help="with --log-file: rotate at this size (MiB, 0 = never)")
    p.add_argument("--rlimit-nofile", type=int, default=DEFAULT_RLIMIT_NOFILE,
                   help="RLIMIT_NOFILE to set (0 leaves it unchanged)")
    p.add_argument("--id", help="instance id (needs --supervisor)")
    p.add_argument("--supervisor", help="supervisor socket (needs --id; not used)")
    p.add_argument("--hybrid-mode", action="store_false", dest="hybrid_mode",
                   help="accepted for runtime-rs; nydusd's inverted flag, no effect here")
    p.add_argument("--upgrade", action="store_true", help="accepted and ignored (virtio-fs)")
    p.add_argument("--dedup-db", help="accepted and ignored (no cross-image dedup)")
    # Our own flags.
    p.add_argument("--cache", choices=CACHE_POLICIES, default="auto",
                   help="how long the guest may cache passthrough entries, attrs and data")
    p.add_argument("--workers", type=int, help="requests per queue that may be in flight")
    p.add_argument("--thread-pool-size", type=int, dest="thread_pool_size",
                   help=("virtiofsd's flag: ignored with a warning under vhostfs-nydusd"
                         if nydusd else "same as --workers"))
    p.add_argument("--poll-us", type=int, default=DEFAULT_POLL_US, metavar="US",
                   help=("longest a request queue polls for the next request before it "
                         "sleeps; adapts to the guest, 0 never polls (default %(default)s)"))
    p.add_argument("--no-packed", dest="packed", action="store_false",
                   help="do not offer packed rings")
    p.add_argument("--writable", action="store_true", default=None,
                   help="the --shared-dir mount accepts writes")
    p.add_argument("--read-only", dest="writable", action="store_false",
                   help="the --shared-dir mount refuses writes")
    # virtiofsd options Kata ships by default: tolerated, with a warning.
    p.add_argument("-o", dest="virtiofsd_options", action="append", default=[],
                   metavar="OPT", help="virtiofsd option: ignored with a warning")
    p.set_defaults(virtiofsd_flags=[])
    for switch in VIRTIOFSD_SWITCHES:
        p.add_argument(switch, dest="virtiofsd_flags", action=_Tolerated, nargs=0,
                       help=argparse.SUPPRESS)
    for option in VIRTIOFSD_VALUED:
        p.add_argument(option, dest="virtiofsd_flags", action=_Tolerated,
                       help=argparse.SUPPRESS)
    return p


class _Tolerated(argparse.Action):
    """Records a virtiofsd flag as it was written, for the warning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        written = f"{option_string}={values}" if isinstance(values, str) else str(option_string)
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), written])


def log_file_name(path: str) -> str:
    """nydusd appends ".log" to a log file name without an extension."""
    base = os.path.basename(path)
    return path if "." in base.lstrip(".") else path + ".log"


def _ignored(args: argparse.Namespace, nydusd: bool) -> list[str]:
    ignored = [f"-o {opt}" for opt in args.virtiofsd_options]
    ignored += args.virtiofsd_flags
    if nydusd and args.thread_pool_size is not None:
        ignored.append(f"--thread-pool-size={args.thread_pool_size}")
    return ignored


def _warnings(args: argparse.Namespace, nydusd: bool) -> list[str]:
    notes = [f"ignoring virtiofsd option {flag} (not a nydusd flag; set virtio_fs_extra_args "
             "= [] to silence this)" for flag in _ignored(args, nydusd)]
    if args.upgrade:
        notes.append("--upgrade is ignored in virtiofs mode (no state to take over)")
    if args.dedup_db:
        notes.append(f"--dedup-db {args.dedup_db}: chunk deduplication is not implemented; "
                     "ignored")
    if args.log_rotation_size and not args.log_file:
        notes.append("--log-rotation-size without --log-file is ignored")
    if not args.hybrid_mode:
        notes.append("--hybrid-mode has no effect in vhostfs (open/opendir always forwarded)")
    return notes


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.sock:
        p.error("the following arguments are required: --sock")
    if args.shared_dir and args.bootstrap:
        p.error("--shared-dir and --bootstrap cannot be used together")
    if args.config and args.localfs_dir:
        p.error("--config and --localfs-dir cannot be used together")
    if args.bootstrap and not (args.config or args.localfs_dir):
        p.error("--bootstrap needs --config or --localfs-dir")
    if args.prefetch_files and not args.bootstrap:
        p.error("--prefetch-files needs --bootstrap")
    if bool(args.id) != bool(args.supervisor):
        p.error("--id and --supervisor must be used together")
    if args.rlimit_nofile < 0:
        p.error("--rlimit-nofile must not be negative")
    if args.log_rotation_size < 0:
        p.error("--log-rotation-size must not be negative")
    if not 0 <= args.poll_us <= MAX_POLL_US:
        p.error(f"--poll-us must be between 0 and {MAX_POLL_US}")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be at least 1")
    if args.thread_pool_size is not None and args.thread_pool_size < 0:
        p.error("--thread-pool-size must not be negative")


def _workers(args: argparse.Namespace, nydusd: bool) -> int:
    if args.workers is not None:
        return int(args.workers)
    if not nydusd and args.thread_pool_size:
        return int(args.thread_pool_size)
    return DEFAULT_WORKERS


def parse_args(argv: Sequence[str], *, prog: str = "vhostfs", nydusd: bool = False
               ) -> DaemonConfig:
    """Parse `argv` (without the program name).

    Raises SystemExit(2) with usage on stderr for usage errors, and SystemExit(0) after
    printing build information for `--version`/`-V` (which needs no subcommand).
    """
    if "--version" in argv or "-V" in argv:
        from vhostfs.api.info import version_text

        print(version_text(), end="")
        raise SystemExit(0)
    p = build_parser(prog, nydusd=nydusd)
    args = p.parse_intermixed_args(list(argv))
    _validate(p, args)
    writable = nydusd if args.writable is None else bool(args.writable)
    return DaemonConfig(
        sock=args.sock, apisock=args.apisock, shared_dir=args.shared_dir,
        bootstrap=args.bootstrap, config=args.config, localfs_dir=args.localfs_dir,
        prefetch_files=args.prefetch_files, virtual_mountpoint=args.virtual_mountpoint,
        log_level=args.log_level,
        log_file=log_file_name(args.log_file) if args.log_file else None,
        log_rotation_size=args.log_rotation_size, rlimit_nofile=args.rlimit_nofile,
        id=args.id, supervisor=args.supervisor, hybrid_mode=args.hybrid_mode,
        dedup_db=args.dedup_db, cache="none" if args.cache == "never" else args.cache,
        workers=_workers(args, nydusd), packed=args.packed, poll_us=args.poll_us,
        writable=writable,
        warnings=tuple(_warnings(args, nydusd)),
    )
