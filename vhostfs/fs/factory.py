"""Filesystems from nydusd-style descriptions: a RAFS bootstrap + storage config, or a directory.

Used by the command line for the startup filesystem (`--bootstrap`, `--shared-dir`) and by
the HTTP API for runtime mounts (`fs_type` "rafs" or "passthrough_fs"), so both accept the
same inputs and fail the same way: a configuration or image problem raises an error whose
message names what is wrong, before anything is attached.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

import rafs
from backends.base import BlobBackend
from backends.cache import CachedBackend, CacheSettings
from backends.config import LocalFsConfig
from backends.factory import build_storage
from backends.localfs import LocalFsBackend
from backends.nydusconfig import parse_config
from backends.prefetch import PrefetchSettings
from vhostfs.fs.chunks import CachedChunks, ChunkSource, DirectChunks
from vhostfs.fs.passthrough import PassthroughFilesystem
from vhostfs.fs.passthrough_write import WritablePassthroughFilesystem
from vhostfs.fs.rafsfs import RafsFilesystem
from vhostfs.fs.rafsprefetch import PrefetchPlan
from vhostfs.fuse.filesystem import Filesystem, ReadOnlyFilesystem


def chunk_source(
    storage: BlobBackend | CachedBackend,
    limiter: trio.CapacityLimiter,
    prefetch: PrefetchSettings = PrefetchSettings(),  # noqa: B008 - frozen
) -> ChunkSource:
    if isinstance(storage, CachedBackend):
        return CachedChunks(storage, prefetch)
    return DirectChunks(storage, limiter)


def open_rafs(
    bootstrap: str,
    *,
    config: str | None = None,
    localfs_dir: str | None = None,
    limiter: trio.CapacityLimiter,
    prefetch_files: Sequence[str] | None = (),
) -> RafsFilesystem:
    """A RAFS image with its storage: `config` is nydusd's JSON/TOML text, or `localfs_dir`
    is nydusd's shortcut (blobs in that directory, blob cache in the same directory).

    `prefetch_files` (absolute paths inside the image) replaces the bootstrap's prefetch
    table when the configuration enables prefetch; the caller starts the prefetch with
    `await fs.prefetch()` in its nursery once the filesystem is attached.

    Raises RafsError for a bad bootstrap, backends' ConfigError for a bad configuration and
    ValueError for a relative prefetch path.
    """
    files = tuple(prefetch_files or ())
    PrefetchPlan(files=files)  # refuse relative paths before anything is opened
    image = rafs.open_image(bootstrap)
    settings = PrefetchSettings()
    if config is not None:
        storage_config = parse_config(config)
        storage = build_storage(storage_config, limiter)
        enable_xattr = storage_config.rafs.enable_xattr
        settings = storage_config.rafs.prefetch
    elif localfs_dir is not None:
        backend = LocalFsBackend(LocalFsConfig(dir=localfs_dir), limiter)
        storage = CachedBackend(backend, CacheSettings(work_dir=localfs_dir), limiter)
        enable_xattr = True
    else:
        raise ValueError("a RAFS mount needs a storage configuration or a localfs directory")
    plan = PrefetchPlan(enable=settings.enable, files=files, prefetch_all=settings.prefetch_all)
    return RafsFilesystem(
        image, chunk_source(storage, limiter, settings), enable_xattr=enable_xattr, prefetch=plan
    )


def open_passthrough(
    directory: str, *, cache: str = "auto", writable: bool = False, writeback: bool = False
) -> Filesystem:
    """A host directory: read-only, or writable as Kata's shared directory needs."""
    if writable:
        return WritablePassthroughFilesystem(directory, cache=cache, writeback=writeback)
    return ReadOnlyFilesystem(PassthroughFilesystem(directory, cache=cache))
