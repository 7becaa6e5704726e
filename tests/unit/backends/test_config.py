"""nydusd configuration parsing: v1 (Kata's document), v2 JSON and TOML, errors name keys."""

from __future__ import annotations

import copy
import json

import pytest
import trio

from backends import CachedBackend, ConfigError, RegistryBackend, build_storage, parse_config
from backends.config import LocalFsConfig, ObjectStoreConfig, RegistryConfig

KATA_V1 = {
    "device": {
        "id": "/42",
        "backend": {"type": "registry", "config": {
            "readahead": False, "host": "index.docker.io", "repo": "library/alpine",
            "auth": "dXNlcjpwYXNz", "scheme": "https", "proxy": {"fallback": False},
            "timeout": 5, "connect_timeout": 5, "retry_limit": 2,
            "mirrors": [{"host": "http://127.0.0.1:65001",
                         "headers": {"X-Dragonfly-Registry": "https://index.docker.io"}}]}},
        "cache": {"type": "blobcache", "config": {"work_dir": "/var/lib/cache",
                                                   "disable_indexed_map": False}},
    },
    "mode": "direct", "digest_validate": False, "enable_xattr": True,
    "fs_prefetch": {"enable": True, "prefetch_all": True, "threads_count": 8,
                    "merging_size": 1048576},
}


def test_kata_v1_document() -> None:
    config = parse_config(json.dumps(KATA_V1))
    assert config.id == "/42" and config.backend_type == "registry"
    backend = config.backend
    assert isinstance(backend, RegistryConfig)
    assert (backend.host, backend.repo, backend.scheme) == ("index.docker.io", "library/alpine",
                                                             "https")
    assert backend.http.retry_limit == 2 and backend.http.timeout == 5
    assert backend.proxy.fallback is False and backend.proxy.url == ""
    assert backend.mirrors[0].headers == {"X-Dragonfly-Registry": "https://index.docker.io"}
    assert backend.mirrors[0].failure_limit == 5
    assert config.cache_type == "blobcache" and config.work_dir == "/var/lib/cache"
    assert config.rafs.enable_xattr and config.rafs.batch_size == 1 << 20
    assert config.cache_prefetch.enable and config.cache_prefetch.prefetch_all
    assert config.cache_prefetch.bandwidth_rate == 0


def test_v1_defaults() -> None:
    doc = {"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}},
           "mode": "direct"}
    config = parse_config(json.dumps(doc))
    assert config.backend == LocalFsConfig(dir="/b")
    assert config.cache_type == "" and config.work_dir == "."
    assert config.rafs.prefetch.enable is False and config.rafs.prefetch.prefetch_all is True
    assert config.rafs.validate is False


@pytest.mark.parametrize(("path", "value", "message"), [
    (("device", "backend", "config", "hots"), "x", "unknown key device.backend.config.hots"),
    (("device", "cache", "config", "workdir"), "x", "unknown key device.cache.config.workdir"),
    (("fs_prefetch", "threads"), 3, "unknown key fs_prefetch.threads"),
    (("device", "backend", "config", "timeout"), "5", "device.backend.config.timeout"),
    (("device", "backend", "config", "skip_verify"), 1, "device.backend.config.skip_verify"),
    (("amplify_io",), 0x10000001, "amplify_io"),
    (("fs_prefetch", "threads_count"), 0, "fs_prefetch.threads_count"),
    (("mode",), "lazy", "mode"),
    (("device", "backend", "type"), "http-proxy", "unsupported backend type"),
    (("device", "cache", "type"), "ramcache", "device.cache.type"),
])
def test_v1_errors_name_the_key(path: tuple[str, ...], value: object, message: str) -> None:
    doc = copy.deepcopy(KATA_V1)
    target: dict[str, object] = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[assignment]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(json.dumps(doc))


def test_v1_required_keys() -> None:
    doc = copy.deepcopy(KATA_V1)
    del doc["device"]["backend"]["config"]["repo"]  # type: ignore[index]
    with pytest.raises(ConfigError, match="repo is required"):
        parse_config(json.dumps(doc))
    doc = copy.deepcopy(KATA_V1)
    del doc["mode"]
    with pytest.raises(ConfigError, match="mode is required"):
        parse_config(json.dumps(doc))


V2_TOML = """
version = 2
id = "/42"

[backend]
type = "s3"
[backend.s3]
endpoint = "127.0.0.1:9000"
scheme = "http"
region = "us-east-1"
bucket_name = "blobs"
object_prefix = "nydus/"

[cache]
type = "filecache"
[cache.filecache]
work_dir = "/tmp/c"
[cache.prefetch]
enable = true
threads = 2
bandwidth_limit = 1000000

[rafs]
mode = "direct"
batch_size = 0
validate = true
"""


def test_v2_toml() -> None:
    config = parse_config(V2_TOML)
    assert isinstance(config.backend, ObjectStoreConfig)
    assert config.backend.kind == "s3" and config.backend.object_prefix == "nydus/"
    assert config.cache_prefetch.threads_count == 2
    assert config.cache_prefetch.bandwidth_rate == 1_000_000
    assert config.cache_prefetch.prefetch_all is False  # v2 default differs from v1
    assert config.rafs.validate and config.rafs.batch_size == 0
    assert config.work_dir == "/tmp/c"


def test_v2_json_and_errors() -> None:
    doc = {"version": 2, "backend": {"type": "oss", "oss": {"endpoint": "e", "bucket_name": "b"}},
           "cache": {"type": "blobcache", "prefetch": {"threads": 4}}}
    with pytest.raises(ConfigError, match=r"cache\.prefetch\.enable is required"):
        parse_config(json.dumps(doc))
    doc["cache"] = {"type": "blobcache", "filecache": {"work_dir": ""}}
    with pytest.raises(ConfigError, match=r"cache\.filecache\.work_dir"):
        parse_config(json.dumps(doc))
    doc["cache"] = {"type": "blobcache", "filecache": {"work_dir": "/w"}}
    assert parse_config(json.dumps(doc)).backend_type == "oss"
    with pytest.raises(ConfigError, match="failed to parse"):
        parse_config("{not json nor toml")


async def test_factory_builds_cached_registry(tmp_path: object) -> None:
    doc = copy.deepcopy(KATA_V1)
    doc["device"]["cache"]["config"]["work_dir"] = str(tmp_path)  # type: ignore[index]
    storage = build_storage(parse_config(json.dumps(doc)), trio.CapacityLimiter(2))
    assert isinstance(storage, CachedBackend)
    assert isinstance(storage.backend, RegistryBackend)
    await storage.aclose()
    doc["device"]["cache"]["compressed"] = True  # type: ignore[index]
    with pytest.raises(ConfigError, match="compressed"):
        build_storage(parse_config(json.dumps(doc)), trio.CapacityLimiter(2))
