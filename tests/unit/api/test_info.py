"""DaemonInfo pieces: mounted_time, the v2 rendering with credentials blanked, config store."""

from __future__ import annotations

import json

import pytest

from backends.nydusconfig import parse_config
from vhostfs.api.configstore import ConfigStore
from vhostfs.api.errors import ApiFailure, rust_str
from vhostfs.api.info import daemon_info, mounted_time, render_config


def test_mounted_time_format() -> None:
    assert mounted_time(1_787_393_054_123_456_789) == "2026-08-22 10:04:14.123456789 +00:00:00"


def registry(**extra: object) -> str:
    return json.dumps({"device": {"id": "/42", "backend": {"type": "registry", "config": {
        "host": "index.docker.io", "repo": "library/alpine", "auth": "dXNlcjpwYXNz",
        "registry_token": "tok", **extra}}, "cache": {"type": "blobcache", "config": {
        "work_dir": "/var/cache"}}}, "mode": "direct", "enable_xattr": True})


def test_registry_credentials_are_blanked() -> None:
    rendered = render_config(parse_config(registry()))
    table = rendered["backend"]["registry"]  # type: ignore[index]
    assert table["auth"] is None and table["registry_token"] is None
    assert table["host"] == "index.docker.io"
    assert "dXNlcjpwYXNz" not in json.dumps(rendered)
    assert rendered["cache"]["filecache"]["work_dir"] == "/var/cache"  # type: ignore[index]
    assert rendered["rafs"]["enable_xattr"] is True  # type: ignore[index]


def test_s3_keys_are_blanked_too() -> None:
    text = json.dumps({"device": {"backend": {"type": "s3", "config": {
        "region": "r", "bucket_name": "b", "endpoint": "e", "access_key_id": "AKIA",
        "access_key_secret": "SECRET"}}, "cache": {"type": "blobcache", "config": {
        "work_dir": "/c"}}}, "mode": "direct"})
    dumped = json.dumps(render_config(parse_config(text)))
    assert "AKIA" not in dumped and "SECRET" not in dumped


def test_daemon_info_shape() -> None:
    info = daemon_info(state="RUNNING", daemon_id=None, supervisor=None, backends=None)
    assert list(info) == ["version", "id", "supervisor", "state", "backend_collection"]
    assert set(info["version"]) == {  # type: ignore[arg-type]
        "package_ver", "git_commit", "build_time", "profile", "rustc"}


def test_config_store() -> None:
    store = ConfigStore()
    store.update("/m", {"registry_auth": "a", "proxy_url": "p"})
    assert store.get("/m") == {"registry_auth": "a", "proxy_url": "p"}
    with pytest.raises(ApiFailure) as info:
        store.update("/m", {"dragonfly_scheduler_endpoint": "d", "colour": "red"})
    assert (info.value.status, info.value.debug) == (500, "ResponsePayloadType")
    assert store.get("/m")["dragonfly_scheduler_endpoint"] == "d"  # applied before the bad one
    assert store.get(None) == {"/m:registry_auth": "a", "/m:proxy_url": "p",
                               "/m:dragonfly_scheduler_endpoint": "d"}
    store.forget("/m")
    assert store.get(None) == {}


def test_rust_debug_strings() -> None:
    assert rust_str('a "b"\n\\') == '"a \\"b\\"\\n\\\\"'
