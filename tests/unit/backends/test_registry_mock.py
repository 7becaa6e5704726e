"""Registry backend flows over httpx.MockTransport: bearer/basic auth, redirects without
credential leaks, retries with backoff (MockClock), mirrors with fallback, short bodies."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from backends import AuthError, BlobNotFound, RegistryBackend, ServerError
from backends.base import BlobId
from backends.config import MirrorConfig, RegistryConfig
from backends.http import HttpSettings

DATA = bytes(range(256)) * 64
BLOB = BlobId(hashlib.sha256(DATA).hexdigest())
BLOB_PATH = f"/v2/library/app/blobs/sha256:{BLOB}"


def ranged(request: httpx.Request, data: bytes = DATA) -> httpx.Response:
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", request.headers["range"])
    assert match is not None
    first, last = int(match.group(1)), int(match.group(2))
    return httpx.Response(206, content=data[first:last + 1],
                          headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"})


def backend(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object
            ) -> RegistryBackend:
    config = RegistryConfig(host="registry.example", repo="library/app", **kwargs)  # type: ignore[arg-type]
    return RegistryBackend(config, transport=httpx.MockTransport(handler))


async def test_bearer_flow_redirect_and_no_credential_leak() -> None:
    seen: list[httpx.Request] = []
    tokens = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal tokens
        seen.append(request)
        if request.url.host == "auth.example":
            tokens += 1
            assert request.url.params["scope"] == "repository:library/app:pull"
            assert request.url.params["service"] == "reg"
            assert request.headers["authorization"] == "Basic " + base64.b64encode(
                b"alice:secret").decode()
            return httpx.Response(200, json={"token": "T1", "expires_in": 300})
        if request.url.host == "storage.example":
            assert "authorization" not in request.headers
            return ranged(request)
        if request.headers.get("authorization") != "Bearer T1":
            return httpx.Response(401, headers={"WWW-Authenticate":
                                                'Bearer realm="https://auth.example/token",'
                                                'service="reg"'})
        assert request.url.path == BLOB_PATH
        return httpx.Response(307, headers={"Location": "https://storage.example/b?sig=1"})

    reg = backend(handler, auth=base64.b64encode(b"alice:secret").decode())
    assert await reg.read_range(BLOB, 10, 100) == DATA[10:110]
    assert await reg.read_range(BLOB, 4000, 96) == DATA[4000:4096]
    assert await reg.blob_size(BLOB) == len(DATA)
    assert tokens == 1
    # After the first redirect the storage URL is reused directly.
    assert [r.url.host for r in seen].count("registry.example") == 2
    assert reg.metrics.read_count == 2 and reg.metrics.read_amount_total == 196
    assert list(reg.metrics.recent) == [(BLOB, 10, 100), (BLOB, 4000, 96)]
    await reg.aclose()


async def test_token_refreshed_after_expiry(autojump_clock: trio.testing.MockClock) -> None:
    issued: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            issued.append(f"T{len(issued)}")
            return httpx.Response(200, json={"token": issued[-1], "expires_in": 60})
        if request.headers.get("authorization") != f"Bearer {issued[-1] if issued else ''}":
            return httpx.Response(401, headers={"WWW-Authenticate":
                                                'Bearer realm="https://auth.example/t"'})
        return ranged(request)

    reg = backend(handler)
    assert await reg.read_range(BLOB, 0, 4) == DATA[:4]
    await trio.sleep(45)  # within 20 s of expiry: the next read fetches a fresh token first
    assert await reg.read_range(BLOB, 4, 4) == DATA[4:8]
    assert issued == ["T0", "T1"]
    assert reg.auth.token_fetches == 2
    await reg.aclose()


async def test_basic_auth_and_refusal() -> None:
    good = "Basic " + base64.b64encode(b"bob:pw").decode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != good:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return ranged(request)

    reg = backend(handler, auth=base64.b64encode(b"bob:pw").decode())
    assert await reg.read_range(BLOB, 1, 2) == DATA[1:3]
    await reg.aclose()
    anonymous = backend(handler)
    with pytest.raises(AuthError):
        await anonymous.read_range(BLOB, 1, 2)
    await anonymous.aclose()


async def test_retries_5xx_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return httpx.Response(503)
        if calls == 3:
            raise httpx.ReadTimeout("slow", request=request)
        return ranged(request)

    reg = backend(handler)
    started = trio.current_time()
    assert await reg.read_range(BLOB, 0, 16) == DATA[:16]
    assert calls == 4
    assert trio.current_time() - started > 0.1  # it did back off, on the mock clock
    always = backend(lambda request: httpx.Response(500))
    with pytest.raises(ServerError):
        await always.read_range(BLOB, 0, 16)
    assert always.metrics.read_errors == 1
    await reg.aclose()
    await always.aclose()


async def test_short_body_is_retried_never_returned(
        autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        response = ranged(request)
        if calls == 1:
            return httpx.Response(206, content=response.content[:5],
                                  headers={"Content-Range": response.headers["content-range"]})
        return response

    reg = backend(handler)
    assert await reg.read_range(BLOB, 100, 50) == DATA[100:150]
    assert calls == 2
    await reg.aclose()


async def test_mirror_headers_and_fallback(autojump_clock: trio.testing.MockClock) -> None:
    mirror_up = False
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "mirror.example":
            assert request.headers["x-dragonfly-registry"] == "https://registry.example"
            return ranged(request) if mirror_up else httpx.Response(502)
        return ranged(request)

    mirror = MirrorConfig(host="http://mirror.example:65001",
                          headers={"X-Dragonfly-Registry": "https://registry.example"},
                          failure_limit=1, health_check_interval=5)
    reg = backend(handler, mirrors=(mirror,))
    assert await reg.read_range(BLOB, 0, 8) == DATA[:8]
    assert hosts == ["mirror.example", "registry.example"]
    mirror_up = True
    assert await reg.read_range(BLOB, 8, 8) == DATA[8:16]
    assert hosts[-1] == "registry.example"  # mirror still in its penalty window
    await trio.sleep(6)  # mock time: past the mirror's 5 s health_check_interval
    assert await reg.read_range(BLOB, 16, 8) == DATA[16:24]
    assert hosts[-1] == "mirror.example"
    await reg.aclose()


async def test_proxy_without_fallback_fails() -> None:
    from backends.config import ProxyConfig

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    reg = backend(handler, proxy=ProxyConfig(url="http://proxy.example:65001", fallback=False),
                  http=HttpSettings(retry_limit=1))
    with pytest.raises(BlobNotFound):
        await reg.read_range(BLOB, 0, 8)
    await reg.aclose()
