"""Configuration -> backend (+ cache): the only module that knows every backend.

`build_backend` turns a parsed backend config into a BlobBackend; `build_storage` adds the
blob cache when the configuration asks for one (`blobcache`/`filecache`). What is parsed
but not implemented here fails loudly with a ConfigError rather than mounting something
that behaves differently: `localdisk`, `http-proxy`, `fscache`, `cache.compressed`, the
Dragonfly scheduler SDK.
"""

from __future__ import annotations

import httpx
import trio

from .base import BlobBackend
from .cache import CachedBackend, CacheSettings
from .config import LocalFsConfig, ObjectStoreConfig, RegistryConfig
from .errors import ConfigError
from .localfs import LocalFsBackend
from .nydusconfig import BackendConfig, StorageConfig
from .objectstore import oss_backend, s3_backend
from .registry import RegistryBackend


def build_backend(config: BackendConfig | None, kind: str, limiter: trio.CapacityLimiter, *,
                  transport: httpx.AsyncBaseTransport | None = None) -> BlobBackend:
    """The backend for `config`; the caller owns it (`aclose`)."""
    if isinstance(config, RegistryConfig):
        if config.proxy.dragonfly_scheduler_endpoint:
            raise ConfigError("proxy.dragonfly_scheduler_endpoint is not supported")
        return RegistryBackend(config, transport=transport)
    if isinstance(config, ObjectStoreConfig):
        make = s3_backend if config.kind == "s3" else oss_backend
        return make(config, transport=transport)
    if isinstance(config, LocalFsConfig):
        return LocalFsBackend(config, limiter)
    raise ConfigError(f"backend type {kind!r} is not supported by vhostfs")


def build_storage(config: StorageConfig, limiter: trio.CapacityLimiter, *,
                  transport: httpx.AsyncBaseTransport | None = None
                  ) -> BlobBackend | CachedBackend:
    """Backend wrapped in the blob cache if configured; the caller owns the result."""
    if config.cache_type == "fscache":
        raise ConfigError("cache.type fscache is not supported (virtio-fs uses blobcache)")
    if config.cache_compressed:
        raise ConfigError("cache.compressed is not supported: the cache stores uncompressed "
                          "chunks (.blob.data)")
    backend = build_backend(config.backend, config.backend_type, limiter, transport=transport)
    if config.cache_type not in ("blobcache", "filecache"):
        return backend
    settings = CacheSettings(work_dir=config.work_dir,
                             validate=config.cache_validate or config.rafs.validate,
                             amplify_io=config.rafs.batch_size)
    return CachedBackend(backend, settings, limiter)
