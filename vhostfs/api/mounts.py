"""Runtime mounts behind `/api/v1/mount`: open a filesystem, attach it, detach and close it.

reference/nydusd-interface.md sections 2.4 (MountCmd, mount rules) and 3.3 (what Kata
sends). Kata mounts the sandbox share (`fs_type` passthrough_fs, writable: the guest's
overlayfs puts container upper dirs there) and one RAFS image per container at
`/rafs/<cid>/lowerdir`, and unmounts the images when containers go.

Ownership. Each MountRecord owns its filesystem: after detaching, the RAFS chunk source
(backend, blob cache files) is closed, and a background prefetch, when the filesystem has
one (`async def prefetch()`), runs in the record's own cancel scope inside the daemon's
nursery and is cancelled on unmount. Mount, remount and unmount are serialized by one
lock (the pseudo tree's attach awaits in the middle), which never delays readers of state.

Failures are nydusd's ApiErrors: 500 `MountFilesystem(Other("<message>"))` with upstream's
messages for an occupied or missing mountpoint and a bad fs_type; a mount that fails
leaves nothing attached and nothing open.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from backends.config import RegistryConfig
from backends.errors import BackendError
from backends.nydusconfig import StorageConfig, parse_config
from rafs import RafsError
from vhostfs.api import errors
from vhostfs.api.configstore import ConfigStore
from vhostfs.errors import FsError, VhostfsError
from vhostfs.fs.factory import open_passthrough, open_rafs
from vhostfs.fs.pseudo import PseudoFilesystem, path_key
from vhostfs.fs.rafsfs import RafsFilesystem
from vhostfs.fuse.filesystem import Filesystem

log = logging.getLogger(__name__)

RAFS: Final = "Rafs"
PASSTHROUGH: Final = "PassthroughFs"
FS_TYPES: Final = {"rafs": RAFS, "passthrough_fs": PASSTHROUGH, "passthroughfs": PASSTHROUGH,
                   "passthrough": PASSTHROUGH}
# What opening a filesystem may raise for bad input (config, image, host directory).
OPEN_ERRORS: Final = (OSError, ValueError, RafsError, BackendError, VhostfsError)


@dataclass(frozen=True, slots=True)
class MountCmd:
    """Body of POST/PUT /api/v1/mount."""

    source: str  # passthrough: host directory; rafs: bootstrap path
    config: str  # rafs: the whole configuration as a string; passthrough: ignored
    fs_type: str = ""
    prefetch_files: tuple[str, ...] | None = None  # absolute paths inside the image


@dataclass(eq=False)
class MountRecord:
    mountpoint: str  # canonical ("/rafs/c/lowerdir")
    backend_type: str  # RAFS or PASSTHROUGH
    fs: Filesystem
    source: str
    storage: StorageConfig | None = None  # parsed RAFS configuration (None: --localfs-dir)
    mounted_ns: int = field(default_factory=time.time_ns)
    prefetch: trio.CancelScope | None = None

    @property
    def config_id(self) -> str:
        """The blob cache metrics id (the configuration's `id`)."""
        return self.storage.id if self.storage is not None else ""


def fs_kind(fs_type: str) -> str:
    kind = FS_TYPES.get(fs_type)
    if kind is None:
        raise errors.mount_error(
            f"invalid argument `only 'rafs' and 'passthrough_fs' are supported, but {fs_type} "
            "was specified`")
    return kind


def check_prefetch_files(files: Sequence[str] | None) -> tuple[str, ...] | None:
    if files is not None and any(not f.startswith("/") for f in files):
        raise errors.mount_error("invalid prefetch file list")
    return tuple(files) if files is not None else None


class MountTable:
    """The daemon's runtime mounts over one PseudoFilesystem."""

    def __init__(self, root: PseudoFilesystem, *, limiter: trio.CapacityLimiter,
                 store: ConfigStore, cache: str = "auto",
                 nursery: trio.Nursery | None = None) -> None:
        self.root = root
        self.limiter = limiter
        self.store = store
        self.cache = cache  # guest cache policy of passthrough mounts
        self.nursery = nursery  # where prefetches run; None: no background prefetch
        self.records: dict[str, MountRecord] = {}
        self._lock = trio.Lock()

    # -- the three operations -------------------------------------------------------------

    async def mount(self, mountpoint: str, cmd: MountCmd) -> MountRecord:
        kind = fs_kind(cmd.fs_type)
        key = _key(mountpoint)
        async with self._lock:
            if key in self.records or key in self.root.mounts:
                raise errors.mount_error(errors.ALREADY_EXISTS)
            record = self._open(key, kind, cmd)
            try:
                await self.root.attach(key, record.fs, kind)
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await _close(record)
                if isinstance(exc, FsError):
                    raise errors.mount_error(_fs_message(exc)) from exc
                raise
            self.records[key] = record
            self._seed_store(record)
            self._start_prefetch(record)
        log.info("mounted %s %s at %s", kind, cmd.source, key)
        return record

    async def umount(self, mountpoint: str) -> MountRecord:
        key = _key(mountpoint)
        async with self._lock:
            record = self.records.get(key)
            if record is None:
                raise errors.mount_error(errors.NOT_FOUND)
            if record.prefetch is not None:
                record.prefetch.cancel()
            try:
                await self.root.detach(key)
            except FsError as exc:
                raise errors.mount_error(_fs_message(exc)) from exc
            finally:
                del self.records[key]
                self.store.forget(key)
                with trio.CancelScope(shield=True):
                    await _close(record)
        log.info("unmounted %s", key)
        return record

    async def remount(self, mountpoint: str, cmd: MountCmd) -> None:
        """nydusd swaps an image in place; the pseudo tree cannot, so this is 501."""
        kind = fs_kind(cmd.fs_type)
        record = self.records.get(_key(mountpoint))
        if record is None:
            raise errors.mount_error(errors.NOT_FOUND)
        if record.backend_type != RAFS or kind != RAFS:
            raise errors.mount_error(errors.NOT_RAFS)
        raise errors.MOUNT_UNSUPPORTED

    async def aclose(self) -> None:
        """Unmount everything (daemon shutdown)."""
        for key in list(self.records):
            try:
                await self.umount(key)
            except errors.ApiFailure as exc:
                log.warning("unmounting %s at shutdown: %s", key, exc.debug)

    # -- helpers ------------------------------------------------------------------------

    def _open(self, key: str, kind: str, cmd: MountCmd) -> MountRecord:
        try:
            if kind == PASSTHROUGH:
                fs = open_passthrough(cmd.source, cache=self.cache, writable=True)
                return MountRecord(key, kind, fs, cmd.source)
            prefetch_files = check_prefetch_files(cmd.prefetch_files)
            storage = parse_config(cmd.config)
            fs = open_image(cmd.source, config=cmd.config, limiter=self.limiter,
                            prefetch_files=prefetch_files)
            return MountRecord(key, kind, fs, cmd.source, storage=storage)
        except OPEN_ERRORS as exc:
            raise errors.mount_error(_describe(exc)) from exc


    def _seed_store(self, record: MountRecord) -> None:
        """nydusd stores a registry mount's credentials and proxy under its mountpoint."""
        backend = record.storage.backend if record.storage is not None else None
        if isinstance(backend, RegistryConfig):
            self.store.seed(record.mountpoint, registry_auth=backend.auth,
                            proxy_url=backend.proxy.url,
                            dragonfly_scheduler_endpoint=backend.proxy.dragonfly_scheduler_endpoint)

    def _start_prefetch(self, record: MountRecord) -> None:
        prefetch = getattr(record.fs, "prefetch", None)
        if self.nursery is None or prefetch is None or not callable(prefetch):
            return
        scope = record.prefetch = trio.CancelScope()

        async def run() -> None:
            with scope:
                try:
                    await prefetch()
                except Exception:  # a failed prefetch must not take the daemon down
                    log.exception("prefetch of %s failed", record.mountpoint)

        self.nursery.start_soon(run)

    def adopt(self, record: MountRecord) -> None:
        """Register a filesystem the command line attached at start-up."""
        self.records[record.mountpoint] = record
        self._seed_store(record)
        self._start_prefetch(record)


def open_image(source: str, *, config: str | None, limiter: trio.CapacityLimiter,
               localfs_dir: str | None = None,
               prefetch_files: Sequence[str] | None = None) -> RafsFilesystem:
    """open_rafs with nydusd's optional prefetch list (absolute paths inside the image)."""
    return open_rafs(source, config=config, localfs_dir=localfs_dir, limiter=limiter,
                     prefetch_files=tuple(prefetch_files or ()))


async def _close(record: MountRecord) -> None:
    """Release what a filesystem holds beyond `destroy` (the RAFS chunk source)."""
    if isinstance(record.fs, RafsFilesystem):
        try:
            await record.fs.chunks.aclose()
        except OPEN_ERRORS:
            log.exception("closing the storage of %s", record.mountpoint)


def _key(mountpoint: str) -> str:
    try:
        return path_key(mountpoint)
    except FsError as exc:
        raise errors.mount_error(f"invalid argument `{_fs_message(exc)}`") from exc


def _fs_message(exc: FsError) -> str:
    if exc.errno == errno.EEXIST:
        return errors.ALREADY_EXISTS
    if exc.errno == errno.ENOENT:
        return errors.NOT_FOUND
    return str(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__
