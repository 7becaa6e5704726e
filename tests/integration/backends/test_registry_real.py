"""The registry backend against a real CNCF distribution registry (Debian `docker-registry`)
on loopback: anonymous, htpasswd (Basic) and token (Bearer, our JWT token server) auth.

Needs the `docker-registry` and `apache2-utils` (htpasswd) packages (hack/setup).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from backends import AuthError, BlobNotFound, CachedBackend, CacheSettings, RegistryBackend
from backends.base import BlobId
from backends.config import RegistryConfig
from backends.http import HttpSettings
from tests.integration.backends.servers import Registry, TokenIssuer, registry
from tests.support.blobstore import ZlibSha256Codec, data_size, make_blob

DATA = os.urandom(3 << 20)


def config(reg: Registry, **kwargs: object) -> RegistryConfig:
    return RegistryConfig(host=reg.host, repo="test/app", scheme="http",  # type: ignore[arg-type]
                          http=HttpSettings(timeout=10, connect_timeout=5), **kwargs)


@pytest.fixture
def anonymous(tmp_path: Path) -> Iterator[Registry]:
    with registry(tmp_path) as reg:
        yield reg


async def test_anonymous_ranges_only_what_was_asked(anonymous: Registry) -> None:
    blob = BlobId(anonymous.push("test/app", DATA))
    reg = RegistryBackend(config(anonymous))
    assert await reg.blob_size(blob) == len(DATA)
    ranges = [(0, 1), (12345, 4096), (len(DATA) - 100, 100), (1 << 20, 1 << 20)]
    for offset, size in ranges:
        assert await reg.read_range(blob, offset, size) == DATA[offset:offset + size]
    assert list(reg.metrics.recent) == [(blob, o, s) for o, s in ranges]
    assert reg.metrics.read_amount_total == sum(s for _, s in ranges)  # never the whole blob
    # the registry saw one blob GET per read plus the size probe, nothing else
    assert len(anonymous.blob_gets(blob, at_least=len(ranges) + 1)) == len(ranges) + 1
    with pytest.raises(BlobNotFound):
        await reg.read_range(BlobId("0" * 64), 0, 10)
    await reg.aclose()


async def test_cache_over_real_registry(anonymous: Registry, tmp_path: Path) -> None:
    contents = [os.urandom(70000) for _ in range(6)]
    blob, stored, specs = make_blob(contents)
    assert anonymous.push("test/app", stored) == blob
    cache = CachedBackend(RegistryBackend(config(anonymous)),
                          CacheSettings(work_dir=str(tmp_path / "cache"), amplify_io=0),
                          trio.CapacityLimiter(2))
    handle = await cache.open_blob(blob, len(specs), data_size(specs))
    assert await handle.read_chunks([specs[1], specs[4]], ZlibSha256Codec()) == [
        contents[1], contents[4]]
    assert await handle.read_chunks([specs[4]], ZlibSha256Codec()) == [contents[4]]
    assert len(anonymous.blob_gets(blob, at_least=2)) == 2
    await cache.aclose()


async def test_htpasswd_basic_auth(tmp_path: Path) -> None:
    with registry(tmp_path, auth="htpasswd") as reg_server:
        blob = BlobId(reg_server.push("test/app", DATA[:100000]))
        good = base64.b64encode(b"alice:s3cret").decode()
        reg = RegistryBackend(config(reg_server, auth=good))
        assert await reg.read_range(blob, 500, 1000) == DATA[500:1500]
        await reg.aclose()
        bad = RegistryBackend(config(reg_server, auth=base64.b64encode(b"alice:nope").decode()))
        with pytest.raises(AuthError):
            await bad.read_range(blob, 0, 10)
        await bad.aclose()


async def test_bearer_token_flow(tmp_path: Path) -> None:
    issuer = TokenIssuer(tmp_path, "bob", "pw")
    with issuer.serve() as realm, registry(tmp_path, auth="token", token_realm=realm,
                                           bundle=issuer.bundle) as reg_server:
        reg_server.push_headers["Authorization"] = "Bearer " + issuer.token(
            "repository:test/app:pull,push", "test-registry")
        blob = BlobId(reg_server.push("test/app", DATA[:200000]))
        issuer.requests.clear()
        reg = RegistryBackend(config(reg_server, auth=base64.b64encode(b"bob:pw").decode()))
        for offset in (0, 1000, 150000):
            assert await reg.read_range(blob, offset, 777) == DATA[offset:offset + 777]
        assert len(issuer.requests) == 1  # token cached across reads
        assert issuer.requests[0]["scope"] == ["repository:test/app:pull"]
        assert issuer.requests[0]["service"] == ["test-registry"]
        await reg.aclose()
        stranger = RegistryBackend(config(reg_server))
        with pytest.raises(AuthError):
            await stranger.read_range(blob, 0, 10)
        await stranger.aclose()
