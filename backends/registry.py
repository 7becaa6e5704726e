"""OCI distribution v2 blob reads (nydusd's `registry` backend, nydusd-interface §4.5).

`GET <scheme>://<host>/v2/<repo>/blobs/sha256:<id>` with a Range header; the size comes
from the Content-Range of a one-byte read (a HEAD would not survive redirects to presigned
storage URLs, which are signed for GET only).

Routes: a read is tried against, in order, the Dragonfly forward proxy (`proxy.url`), the
healthy legacy mirrors (`mirrors`, each with its own extra headers such as
`X-Dragonfly-Registry`), then the origin registry. A proxy or mirror that fails in a way a
retry could cure (timeout, reset, 5xx) hands the request to the next route; if the proxy
has `fallback = false` its failure is final. A route failing `failure_limit` times in a
row (1 for the proxy) is skipped for `health_check_interval` seconds: health is judged
from real traffic instead of a ping thread.

Redirects (registries often send blob GETs to object storage) are followed here, at most
`MAX_REDIRECTS` deep, with a fresh request that carries no credentials unless the target
is the registry itself (`RegistryAuth` only signs registry hosts). The final location is
cached per blob, as nydusd does, and dropped when it stops working (expired presigned URL).

Retries of the whole route walk are governed by `http.RetryPolicy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import httpx
import trio

from .base import BlobId
from .config import MirrorConfig, RegistryConfig
from .errors import ConnectionLost, CorruptData, RequestError, TransientError
from .http import (
    RetryPolicy,
    make_client,
    measured_read,
    parse_content_range,
    range_header,
    read_ranged_body,
    retrying,
    translate_errors,
)
from .metrics import BackendMetrics
from .registry_auth import RegistryAuth, decode_auth

MAX_REDIRECTS: Final = 5
_REDIRECTS: Final = (301, 302, 303, 307, 308)
# Headers nydusd adds when it talks to a Dragonfly proxy (on-demand read priority).
DRAGONFLY_HEADERS: Final = {
    "X-Dragonfly-Priority": "6",
    "X-Dragonfly-Use-P2P": "true",
    "X-Dragonfly-Prefetch": "false",
}


@dataclass
class _Route:
    """One place a blob request can be sent, with its health."""

    name: str
    client: httpx.AsyncClient
    base: str  # "scheme://netloc" that replaces the origin's
    headers: dict[str, str]
    failure_limit: int
    skip_for: float  # seconds an unhealthy route is skipped
    is_fallback_ok: bool = True  # on failure, may the next route be tried?
    failures: int = 0
    skip_until: float = 0.0

    def healthy(self, now: float) -> bool:
        return self.failures < self.failure_limit or now >= self.skip_until

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.failure_limit:
            self.skip_until = now + self.skip_for

    def succeeded(self) -> None:
        self.failures = 0


def _base(host: str, scheme: str) -> str:
    return host.rstrip("/") if "://" in host else f"{scheme}://{host}"


@dataclass
class _Blob:
    size: int | None = None
    location: str | None = None  # cached redirect target
    location_extra: dict[str, str] = field(default_factory=dict)


class RegistryBackend:
    """BlobBackend over one repository of an OCI registry."""

    def __init__(
        self,
        config: RegistryConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._config = config
        self._policy = policy or RetryPolicy.from_settings(config.http)
        self._clock = clock
        self.metrics = BackendMetrics("registry")
        self._blobs: dict[BlobId, _Blob] = {}
        origin = _base(config.host, config.scheme)
        mirror_bases = [_base(m.host, config.scheme) for m in config.mirrors]
        hosts = {httpx.URL(b).netloc.decode("ascii") for b in [origin, *mirror_bases]}
        credentials = decode_auth(config.auth) if config.auth else None
        self.auth = RegistryAuth(
            config.repo, hosts, credentials=credentials, registry_token=config.registry_token
        )
        self._client = make_client(config.http, transport=transport, auth=self.auth)
        self._routes: list[_Route] = []
        if config.proxy.url:
            proxied = make_client(
                config.http, proxy=config.proxy.url, transport=transport, auth=self.auth
            )
            self._routes.append(
                _Route(
                    "proxy",
                    proxied,
                    origin,
                    dict(DRAGONFLY_HEADERS),
                    1,
                    config.proxy.check_interval,
                    config.proxy.fallback,
                )
            )
        for mirror, base in zip(config.mirrors, mirror_bases, strict=True):
            self._routes.append(self._mirror_route(mirror, base))
        self._routes.append(_Route("origin", self._client, origin, {}, 1 << 62, 0.0))

    def _mirror_route(self, mirror: MirrorConfig, base: str) -> _Route:
        return _Route(
            f"mirror {base}",
            self._client,
            base,
            dict(mirror.headers),
            max(mirror.failure_limit, 1),
            mirror.health_check_interval,
        )

    def _url(self, route: _Route, blob: BlobId) -> str:
        url = f"{route.base}/v2/{self._config.repo}/blobs/sha256:{blob}"
        if route.name == "proxy" and self._config.proxy.use_http:
            url = url.replace("https://", "http://", 1)
        return url

    async def blob_size(self, blob_id: BlobId) -> int:
        entry = self._blobs.setdefault(blob_id, _Blob())
        if entry.size is None:
            entry.size = await retrying(self._policy, lambda: self._fetch_size(blob_id))
        return entry.size

    async def read_range(self, blob_id: BlobId, offset: int, size: int) -> bytes:
        return await measured_read(
            self.metrics,
            self._policy,
            blob_id,
            offset,
            size,
            lambda: self._read(blob_id, offset, size),
        )

    async def aclose(self) -> None:
        for client in {id(r.client): r.client for r in self._routes}.values():
            await client.aclose()

    async def _fetch_size(self, blob: BlobId) -> int:
        response = await self._send(blob, 0, 1)
        try:
            if response.status_code == 200:
                length = response.headers.get("content-length")
                if length is None:
                    raise CorruptData(f"blob {blob}: no Content-Length in full answer")
                return int(length)
            await read_ranged_body(response, 0, 1, f"blob {blob} size")
            _, _, total = parse_content_range(response.headers["content-range"])
            if total is None:
                raise CorruptData(f"blob {blob}: Content-Range gives no total size")
            return total
        finally:
            await response.aclose()

    async def _read(self, blob: BlobId, offset: int, size: int) -> bytes:
        what = f"blob {blob} [{offset}, {offset + size})"
        response = await self._send(blob, offset, size)
        try:
            return await read_ranged_body(response, offset, size, what)
        finally:
            await response.aclose()

    async def _send(self, blob: BlobId, offset: int, size: int) -> httpx.Response:
        """Walk the routes; the first non-failing response is returned still streaming."""
        headers = {"Range": range_header(offset, size), "Accept-Encoding": "identity"}
        last: Exception | None = None
        for route in self._routes:
            now = self._clock()
            if route.name != "origin" and not route.healthy(now):
                continue
            try:
                response = await self._send_route(route, blob, headers)
            except TransientError as exc:
                route.failed(now)
                if not route.is_fallback_ok:
                    raise
                last = exc
                continue
            if response.status_code >= 500 and route.name != "origin":
                await response.aclose()
                route.failed(now)
                if not route.is_fallback_ok:
                    raise ConnectionLost(
                        f"blob {blob}: {route.name} answered {response.status_code}"
                    )
                continue
            route.succeeded()
            return response
        raise last or ConnectionLost(f"blob {blob}: no route answered")

    async def _send_route(
        self, route: _Route, blob: BlobId, headers: dict[str, str]
    ) -> httpx.Response:
        entry = self._blobs.setdefault(blob, _Blob())
        if route.name == "origin" and entry.location is not None:
            response = await self._get(route.client, entry.location, headers)
            if response.status_code < 400:
                return response
            # Presigned URLs expire: forget it and go through the registry again.
            await response.aclose()
            entry.location = None
        url = self._url(route, blob)
        response = await self._get(route.client, url, {**headers, **route.headers})
        redirects = 0
        while response.status_code in _REDIRECTS:
            if redirects == MAX_REDIRECTS:
                await response.aclose()
                raise RequestError(f"blob {blob}: more than {MAX_REDIRECTS} redirects")
            location = self._redirect_target(response)
            await response.aclose()
            response = await self._get(route.client, location, headers)
            if route.name == "origin" and response.status_code < 300:
                entry.location = location
            redirects += 1
        return response

    def _redirect_target(self, response: httpx.Response) -> str:
        target = response.request.url.join(response.headers.get("location", ""))
        if self._config.blob_redirected_host:
            target = target.copy_with(netloc=self._config.blob_redirected_host.encode())
        if self._config.blob_url_scheme:
            target = target.copy_with(scheme=self._config.blob_url_scheme)
        return str(target)

    async def _get(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> httpx.Response:
        with translate_errors(f"GET {httpx.URL(url).copy_with(query=None)}"):
            return await client.send(client.build_request("GET", url, headers=headers), stream=True)
