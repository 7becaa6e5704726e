"""Typed, validated backend settings (nydusd-interface §4.5); no parsing here.

These frozen records are what the backends take. `backends.factory` fills them from
nydusd's v1/v2 JSON; tests build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .http import HttpSettings


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """`proxy` table: an HTTP forward proxy (Dragonfly dfdaemon) for blob requests."""

    url: str = ""
    ping_url: str = ""
    fallback: bool = True  # on proxy failure or >= 500, retry against the origin
    check_interval: float = 5.0  # seconds an unhealthy proxy is skipped
    check_pause_elapsed: float = 300.0  # accepted for compatibility (no ping thread here)
    use_http: bool = False  # send https origin URLs as http through the proxy
    dragonfly_scheduler_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """One entry of the legacy `registry.mirrors` list (nydus v2.2, what Kata pins)."""

    host: str  # "http://127.0.0.1:65001" or a bare host (then the origin's scheme)
    ping_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    auth_through: bool = False
    health_check_interval: float = 5.0  # seconds a failed-over mirror is skipped
    failure_limit: int = 5  # consecutive failures before the mirror is skipped
    health_check_pause_elapsed: float = 300.0


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    host: str
    repo: str
    scheme: str = "https"
    auth: str = ""  # base64 "user:pass"
    registry_token: str = ""
    blob_url_scheme: str = ""
    blob_redirected_host: str = ""
    http: HttpSettings = field(default_factory=HttpSettings)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    mirrors: tuple[MirrorConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class ObjectStoreConfig:
    """`oss` and `s3` tables; `region` is S3-only."""

    kind: str  # "oss" or "s3"
    bucket_name: str
    endpoint: str = ""
    region: str = ""
    scheme: str = "https"
    object_prefix: str = ""
    access_key_id: str = ""
    access_key_secret: str = ""
    http: HttpSettings = field(default_factory=HttpSettings)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)


@dataclass(frozen=True, slots=True)
class LocalFsConfig:
    blob_file: str = ""
    dir: str = ""
    alt_dirs: tuple[str, ...] = ()
