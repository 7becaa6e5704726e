"""Blob storage for RAFS: backends (registry, S3, OSS, local files) and the blob cache.

Public surface: the BlobBackend interface and its implementations, the cache, the
configuration parser and factory, errors and metrics.
"""

from __future__ import annotations

from .base import BlobBackend, BlobId, BlobRange, blob_id
from .cache import CachedBackend, CachedBlob, CacheSettings, ChunkCodec, ChunkSpec
from .errors import (
    AuthError,
    BackendError,
    BackendTimeout,
    BlobNotFound,
    ConfigError,
    ConnectionLost,
    CorruptCache,
    CorruptData,
    RequestError,
    ServerError,
    TransientError,
)
from .factory import build_backend, build_storage
from .localfs import LocalFsBackend
from .metrics import BackendMetrics, CacheMetrics
from .nydusconfig import RafsOptions, StorageConfig, parse_config, parse_v1, parse_v2
from .objectstore import ObjectStoreBackend, oss_backend, s3_backend
from .prefetch import Prefetcher, PrefetchSettings
from .registry import RegistryBackend

__all__ = [
    "AuthError",
    "BackendError",
    "BackendMetrics",
    "BackendTimeout",
    "BlobBackend",
    "BlobId",
    "BlobNotFound",
    "BlobRange",
    "CacheMetrics",
    "CacheSettings",
    "CachedBackend",
    "CachedBlob",
    "ChunkCodec",
    "ChunkSpec",
    "ConfigError",
    "ConnectionLost",
    "CorruptCache",
    "CorruptData",
    "LocalFsBackend",
    "ObjectStoreBackend",
    "PrefetchSettings",
    "Prefetcher",
    "RafsOptions",
    "RegistryBackend",
    "RequestError",
    "ServerError",
    "StorageConfig",
    "TransientError",
    "blob_id",
    "build_backend",
    "build_storage",
    "oss_backend",
    "parse_config",
    "parse_v1",
    "parse_v2",
    "s3_backend",
]
