"""Blobs as objects in S3 or Alibaba OSS (nydusd's `s3` and `oss` backends, §4.5).

One read path for both: the object `<object_prefix><blob_id>` is read with ranged GETs, and
its size comes from a HEAD. The stores differ only in the URL and the signature, so the
signer is a function injected by `s3_backend` / `oss_backend`:

    s3:  <scheme>://<endpoint>/<bucket>/<key>     (path style; SigV4, service "s3")
    oss: <scheme>://<bucket>.<endpoint>/<key>     (virtual host; OSS v1 signature)

Anonymous access (no access_key_id) sends unsigned requests, as nydusd does. Retries follow
`http.RetryPolicy`; status and transport errors map through `backends.http`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from .base import BlobId
from .config import ObjectStoreConfig
from .errors import ConfigError, CorruptData
from .http import (
    RetryPolicy,
    make_client,
    measured_read,
    raise_for_status,
    range_header,
    read_ranged_body,
    retrying,
    translate_errors,
)
from .metrics import BackendMetrics
from .signing import EMPTY_SHA256, Credentials, oss_headers, sigv4_headers

# (method, url, headers to sign) -> headers to add
Signer = Callable[[str, httpx.URL, dict[str, str]], dict[str, str]]
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ObjectStoreBackend:
    """BlobBackend over objects of one bucket."""

    def __init__(
        self,
        config: ObjectStoreConfig,
        base_url: str,
        signer: Signer,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._config = config
        self._base = base_url.rstrip("/")
        self._sign = signer
        self._policy = policy or RetryPolicy.from_settings(config.http)
        self._client = make_client(config.http, proxy=config.proxy.url or None, transport=transport)
        self._sizes: dict[BlobId, int] = {}
        self.metrics = BackendMetrics(config.kind)

    def url(self, blob: BlobId) -> httpx.URL:
        return httpx.URL(f"{self._base}/{self._config.object_prefix}{blob}")

    def _request(self, method: str, blob: BlobId, extra: dict[str, str]) -> httpx.Request:
        url = self.url(blob)
        headers = {"Host": url.netloc.decode("ascii"), **extra}
        headers.update(self._sign(method, url, headers))
        return self._client.build_request(method, url, headers=headers)

    async def blob_size(self, blob_id: BlobId) -> int:
        if blob_id not in self._sizes:
            self._sizes[blob_id] = await retrying(self._policy, lambda: self._head(blob_id))
        return self._sizes[blob_id]

    async def _head(self, blob: BlobId) -> int:
        what = f"HEAD {self._config.kind} blob {blob}"
        with translate_errors(what):
            response = await self._client.send(self._request("HEAD", blob, {}))
        raise_for_status(response, what)
        length = response.headers.get("content-length")
        if length is None or not length.isdigit():
            raise CorruptData(f"{what}: no usable Content-Length")
        return int(length)

    async def read_range(self, blob_id: BlobId, offset: int, size: int) -> bytes:
        return await measured_read(
            self.metrics,
            self._policy,
            blob_id,
            offset,
            size,
            lambda: self._get(blob_id, offset, size),
        )

    async def _get(self, blob: BlobId, offset: int, size: int) -> bytes:
        what = f"{self._config.kind} blob {blob} [{offset}, {offset + size})"
        request = self._request("GET", blob, {"Range": range_header(offset, size)})
        with translate_errors(what):
            response = await self._client.send(request, stream=True)
        try:
            return await read_ranged_body(response, offset, size, what)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def s3_backend(
    config: ObjectStoreConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = _utc_now,
    policy: RetryPolicy | None = None,
) -> ObjectStoreBackend:
    """An S3 (or S3-compatible: MinIO, moto, Ceph RGW) backend with SigV4 signing."""
    if not config.region:
        raise ConfigError("s3: region is required")
    endpoint = config.endpoint or f"s3.{config.region}.amazonaws.com"
    creds = Credentials(config.access_key_id, config.access_key_secret)

    def sign(method: str, url: httpx.URL, headers: dict[str, str]) -> dict[str, str]:
        if creds.anonymous:
            return {}
        return sigv4_headers(
            method=method,
            path=url.path,
            query=[],
            headers=headers,
            payload_sha256=EMPTY_SHA256,
            credentials=creds,
            region=config.region,
            service="s3",
            now=clock(),
        )

    base = f"{config.scheme}://{endpoint}/{config.bucket_name}"
    return ObjectStoreBackend(config, base, sign, transport=transport, policy=policy)


def oss_backend(
    config: ObjectStoreConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = _utc_now,
    policy: RetryPolicy | None = None,
) -> ObjectStoreBackend:
    """An Alibaba Cloud OSS backend with the OSS v1 header signature."""
    if not config.endpoint:
        raise ConfigError("oss: endpoint is required")
    creds = Credentials(config.access_key_id, config.access_key_secret)
    prefix = config.object_prefix

    def sign(method: str, url: httpx.URL, headers: dict[str, str]) -> dict[str, str]:
        if creds.anonymous:
            return {}
        key = prefix + url.path.rsplit("/", 1)[-1]
        return oss_headers(
            method=method,
            bucket=config.bucket_name,
            key=key,
            headers=headers,
            credentials=creds,
            now=clock(),
        )

    base = f"{config.scheme}://{config.bucket_name}.{config.endpoint}"
    return ObjectStoreBackend(config, base, sign, transport=transport, policy=policy)
