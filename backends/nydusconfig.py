"""nydusd's RAFS configuration documents (v1 JSON, v2 JSON/TOML) -> typed records.

Keys and defaults follow nydusd-interface §4 (nydus api config). Detection as nydusd does
it (§4.1): JSON with a `version` key is v2, else TOML v2, else JSON v1.

One deliberate difference: nydusd ignores unknown keys; here an unknown key is a
ConfigError naming its full path (`device.backend.config.hots`), because a misspelt key
silently falling back to a default is how caches end up in `.`. Keys that old nydusd
versions or nydus-snapshotter still emit (`readahead`, `readahead_sec`, top-level `id`,
`cache.prefetch_config`, `external_backends`, `warmup`, `id_mapping`) are accepted and
ignored. Types are checked (a bool is not an int), ranges per §4.6.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, TypeVar

from .cache import DEFAULT_AMPLIFY_IO
from .config import LocalFsConfig, MirrorConfig, ObjectStoreConfig, ProxyConfig, RegistryConfig
from .errors import ConfigError
from .http import HttpSettings
from .prefetch import PrefetchSettings

MAX_BATCH: Final = 0x10000000  # bytes; amplify_io / merging_size upper bound (§4.2)
BACKEND_TYPES: Final = ("registry", "oss", "s3", "localfs", "localdisk", "http-proxy")
CACHE_TYPES: Final = ("", "blobcache", "filecache", "fscache", "dummycache")
T = TypeVar("T")

BackendConfig = RegistryConfig | ObjectStoreConfig | LocalFsConfig


@dataclass(frozen=True, slots=True)
class RafsOptions:
    """The RAFS-level keys (used by the filesystem layer, parsed here with the rest)."""

    mode: str = "direct"
    validate: bool = False  # v1 digest_validate
    batch_size: int = DEFAULT_AMPLIFY_IO  # v1 amplify_io
    enable_xattr: bool = False
    iostats_files: bool = False
    access_pattern: bool = False
    latest_read_files: bool = False
    prefetch: PrefetchSettings = field(default_factory=PrefetchSettings)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Everything a RAFS mount needs from its configuration document."""

    id: str
    backend_type: str
    backend: BackendConfig | None  # None for types parsed but not implemented here
    cache_type: str
    cache_compressed: bool
    cache_validate: bool
    work_dir: str
    disable_indexed_map: bool
    cache_prefetch: PrefetchSettings
    rafs: RafsOptions


class _Table:
    """A JSON/TOML object being read: typed getters that remember which keys were used."""

    def __init__(self, value: object, path: str, ignored: tuple[str, ...] = ()) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path or 'configuration'}: expected an object")
        self._doc: Mapping[str, object] = value
        self._path = path
        self._used = set(ignored)

    def _key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        return key in self._doc

    def _get(self, key: str, kinds: tuple[type, ...], default: T, what: str) -> T:
        self._used.add(key)
        if key not in self._doc:
            return default
        value = self._doc[key]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ConfigError(f"{self._key(key)}: expected {what}, got {value!r}")
        return value  # type: ignore[return-value]  # checked against kinds above

    def text(self, key: str, default: str = "") -> str:
        return self._get(key, (str,), default, "a string")

    def flag(self, key: str, default: bool = False) -> bool:
        return self._get(key, (bool,), default, "true or false")

    def integer(self, key: str, default: int, lo: int = 0, hi: int = 1 << 63) -> int:
        value = self._get(key, (int,), default, "an integer")
        if not lo <= value <= hi:
            raise ConfigError(f"{self._key(key)}: {value} is outside [{lo}, {hi}]")
        return value

    def number(self, key: str, default: float) -> float:
        value = float(self._get(key, (int, float), default, "a number"))
        if value < 0:
            raise ConfigError(f"{self._key(key)}: must not be negative")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value: list[object] = self._get(key, (list,), [], "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._key(key)}: expected a list of strings")
        return tuple(str(v) for v in value)

    def table(self, key: str, ignored: tuple[str, ...] = ()) -> _Table:
        self._used.add(key)
        return _Table(self._doc.get(key, {}), self._key(key), ignored)

    def tables(self, key: str) -> list[_Table]:
        value: list[object] = self._get(key, (list,), [], "a list of objects")
        return [_Table(v, f"{self._key(key)}[{i}]") for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self._doc) - self._used)
        if unknown:
            raise ConfigError(f"unknown key {self._key(unknown[0])}")


def _http(t: _Table) -> HttpSettings:
    return HttpSettings(skip_verify=t.flag("skip_verify"),
                        ca_cert_files=t.strings("ca_cert_files"),
                        timeout=t.number("timeout", 5),
                        connect_timeout=t.number("connect_timeout", 5),
                        retry_limit=t.integer("retry_limit", 0, 0, 1000))


def _proxy(t: _Table) -> ProxyConfig:
    p = t.table("proxy")
    proxy = ProxyConfig(url=p.text("url"), ping_url=p.text("ping_url"),
                        fallback=p.flag("fallback", True),
                        check_interval=p.number("check_interval", 5),
                        check_pause_elapsed=p.number("check_pause_elapsed", 300),
                        use_http=p.flag("use_http"),
                        dragonfly_scheduler_endpoint=p.text("dragonfly_scheduler_endpoint"))
    p.finish()
    return proxy


def _mirror(m: _Table) -> MirrorConfig:
    headers = m.table("headers")
    values = {k: headers.text(k) for k in list(headers._doc)}
    mirror = MirrorConfig(host=m.text("host"), ping_url=m.text("ping_url"), headers=values,
                          auth_through=m.flag("auth_through"),
                          health_check_interval=m.number("health_check_interval", 5),
                          failure_limit=m.integer("failure_limit", 5, 0, 1 << 31),
                          health_check_pause_elapsed=m.number("health_check_pause_elapsed", 300))
    m.finish()
    if not mirror.host:
        raise ConfigError(f"{m._path}.host is required")
    return mirror


def _require(t: _Table, *keys: str) -> None:
    for key in keys:
        if not t.has(key) or t._doc[key] == "":
            raise ConfigError(f"{t._key(key)} is required")


def parse_backend(kind: str, t: _Table) -> BackendConfig | None:
    """The typed config of backend `kind` from its key table `t` (§4.5)."""
    backend: BackendConfig | None
    if kind == "registry":
        _require(t, "host", "repo")
        backend = RegistryConfig(
            host=t.text("host"), repo=t.text("repo"), scheme=t.text("scheme", "https"),
            auth=t.text("auth"), registry_token=t.text("registry_token"),
            blob_url_scheme=t.text("blob_url_scheme"),
            blob_redirected_host=t.text("blob_redirected_host"), http=_http(t), proxy=_proxy(t),
            mirrors=tuple(_mirror(m) for m in t.tables("mirrors")))
    elif kind in ("oss", "s3"):
        _require(t, *(("region", "bucket_name") if kind == "s3" else ("endpoint", "bucket_name")))
        backend = ObjectStoreConfig(
            kind=kind, bucket_name=t.text("bucket_name"), endpoint=t.text("endpoint"),
            region=t.text("region") if kind == "s3" else "", scheme=t.text("scheme", "https"),
            object_prefix=t.text("object_prefix"), access_key_id=t.text("access_key_id"),
            access_key_secret=t.text("access_key_secret"), http=_http(t), proxy=_proxy(t))
    elif kind == "localfs":
        backend = LocalFsConfig(blob_file=t.text("blob_file"), dir=t.text("dir"),
                                alt_dirs=t.strings("alt_dirs"))
        if not backend.blob_file and not backend.dir:
            raise ConfigError(f"{t._path}: localfs needs dir or blob_file")
    elif kind == "localdisk":
        _require(t, "device_path")
        t.text("device_path"), t.flag("disable_gpt")
        backend = None
    elif kind == "http-proxy":
        _require(t, "addr")
        t.text("addr"), t.text("path"), _http(t), _proxy(t)
        backend = None
    else:
        raise ConfigError(f"unsupported backend type {kind!r}")
    t.finish()
    return backend


_LEGACY_BACKEND_KEYS: Final = ("readahead", "readahead_sec")


def _prefetch(t: _Table, names: dict[str, str], prefetch_all: bool) -> PrefetchSettings:
    settings = PrefetchSettings(
        enable=t.flag("enable"),
        threads_count=t.integer(names["threads"], 8, 0, 1024),
        merging_size=t.integer(names["batch"], 1 << 20, 0, MAX_BATCH),
        bandwidth_rate=t.integer(names["rate"], 0),
        prefetch_all=t.flag("prefetch_all", prefetch_all),
        stream_prefetch=t.flag("stream_prefetch"))
    t.finish()
    if settings.enable and not 1 <= settings.threads_count <= 1024:
        raise ConfigError(f"{t._path}.{names['threads']}: must be 1-1024 when enabled")
    return settings


_V1_NAMES: Final = {"threads": "threads_count", "batch": "merging_size", "rate": "bandwidth_rate"}
_V2_NAMES: Final = {"threads": "threads", "batch": "batch_size", "rate": "bandwidth_limit"}


def _cache_dir(cache_type: str, t: _Table) -> tuple[str, bool]:
    work_dir = t.text("work_dir", ".")
    indexed = t.flag("disable_indexed_map")
    if t.flag("enable_encryption") or t.flag("enable_convergent_encryption"):
        raise ConfigError(f"{t._path}: cache encryption is not supported")
    t.text("encryption_key")
    t.finish()
    if cache_type in ("blobcache", "filecache", "fscache") and not work_dir:
        raise ConfigError(f"{t._path}.work_dir must not be empty")
    return work_dir, indexed


def _rafs(mode: str, validate: bool, batch: int, t: _Table, prefetch: PrefetchSettings
          ) -> RafsOptions:
    if mode not in ("direct", "cached"):
        raise ConfigError(f"mode: {mode!r} is not direct or cached")
    return RafsOptions(mode=mode, validate=validate, batch_size=batch,
                       enable_xattr=t.flag("enable_xattr"), iostats_files=t.flag("iostats_files"),
                       access_pattern=t.flag("access_pattern"),
                       latest_read_files=t.flag("latest_read_files"), prefetch=prefetch)


def parse_v1(doc: object) -> StorageConfig:
    """A legacy v1 document (what Kata and nydus-snapshotter send)."""
    top = _Table(doc, "", ignored=("id",))
    device = top.table("device", ignored=("external_backends",))
    backend = device.table("backend")
    kind = backend.text("type")
    if kind in ("", "http-proxy"):
        raise ConfigError(f"device.backend.type: unsupported backend type {kind!r}")
    parsed = parse_backend(kind, backend.table("config", ignored=_LEGACY_BACKEND_KEYS))
    backend.finish()
    cache = device.table("cache", ignored=("prefetch_config",))
    cache_type = _cache_type(cache.text("type"), "device.cache.type")
    compressed, validate = cache.flag("compressed"), cache.flag("validate")
    work_dir, indexed = _cache_dir(cache_type, cache.table("config"))
    cache.finish()
    mount_id = device.text("id")
    device.finish()
    if not top.has("mode"):
        raise ConfigError("mode is required")
    prefetch = _prefetch(top.table("fs_prefetch"), _V1_NAMES, True)
    rafs = _rafs(top.text("mode"), top.flag("digest_validate"),
                 top.integer("amplify_io", DEFAULT_AMPLIFY_IO, 0, MAX_BATCH), top, prefetch)
    top.finish()
    return StorageConfig(id=mount_id, backend_type=kind, backend=parsed,
                         cache_type=cache_type, cache_compressed=compressed,
                         cache_validate=validate, work_dir=work_dir, disable_indexed_map=indexed,
                         cache_prefetch=prefetch, rafs=rafs)


def _cache_type(value: str, where: str) -> str:
    if value not in CACHE_TYPES:
        raise ConfigError(f"{where}: unknown cache type {value!r}")
    return value


def parse_v2(doc: object) -> StorageConfig:
    """A v2 document (JSON or TOML), `version = 2`."""
    top = _Table(doc, "", ignored=("external_backends",))
    if top._get("version", (int,), 0, "an integer") != 2:
        raise ConfigError("version: only 2 is supported")
    backend = top.table("backend")
    kind = backend.text("type")
    if kind not in BACKEND_TYPES:
        raise ConfigError(f"backend.type: unsupported backend type {kind!r}")
    parsed = parse_backend(kind, backend.table(kind, ignored=_LEGACY_BACKEND_KEYS))
    backend.finish()
    cache = top.table("cache")
    cache_type = _cache_type(cache.text("type"), "cache.type")
    sub = "fscache" if cache_type == "fscache" else "filecache"
    work_dir, indexed = _cache_dir(cache_type, cache.table(sub))
    cache_prefetch = _prefetch_v2(cache)
    compressed, validate = cache.flag("compressed"), cache.flag("validate")
    cache.finish()
    rafs_t = top.table("rafs")
    prefetch = _prefetch_v2(rafs_t)
    rafs = _rafs(rafs_t.text("mode", "direct"), rafs_t.flag("validate"),
                 rafs_t.integer("batch_size", DEFAULT_AMPLIFY_IO, 0, MAX_BATCH), rafs_t, prefetch)
    rafs_t.finish()
    overlay = top.table("overlay")
    if top.has("overlay"):
        _require(overlay, "upper_dir", "work_dir")
        overlay.text("upper_dir"), overlay.text("work_dir")
    overlay.finish()
    mount_id = top.text("id")
    top.finish()
    return StorageConfig(id=mount_id, backend_type=kind, backend=parsed,
                         cache_type=cache_type, cache_compressed=compressed,
                         cache_validate=validate, work_dir=work_dir, disable_indexed_map=indexed,
                         cache_prefetch=cache_prefetch, rafs=rafs)


def _prefetch_v2(parent: _Table) -> PrefetchSettings:
    present = parent.has("prefetch")
    t = parent.table("prefetch")
    if present and not t.has("enable"):
        raise ConfigError(f"{t._path}.enable is required")
    return _prefetch(t, _V2_NAMES, False)


def parse_config(text: str) -> StorageConfig:
    """Parse a configuration string or file content, trying v2 JSON, v2 TOML, v1 JSON."""
    try:
        doc: object = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return parse_v2(doc) if "version" in doc else parse_v1(doc)
    try:
        return parse_v2(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        raise ConfigError("failed to parse configuration information") from None
