"""HTTP plumbing shared by the registry and object-store backends.

Three things live here and nowhere else:

* `make_client`: the one place an httpx.AsyncClient is built from the common backend keys
  (nydusd-interface §4.5: `skip_verify`, `ca_cert_files`, `timeout`, `connect_timeout`,
  `proxy.url`). Redirects are never followed by httpx: the registry follows them itself so
  that credentials stay with the host they were meant for.
* `translate_errors` / `raise_for_status`: the single mapping of httpx exceptions and HTTP
  status codes onto the BackendError tree (most specific first, cause chained).
* `RetryPolicy`: a pure description of how often and how long to wait before retrying a
  TransientError, and `retrying`, which applies it with trio.sleep (so tests drive it with
  a MockClock).
"""

from __future__ import annotations

import random
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final, TypeVar

import httpx
import trio

from .base import BlobId, check_range
from .errors import (
    AuthError,
    BackendError,
    BackendTimeout,
    BlobNotFound,
    ConnectionLost,
    CorruptData,
    RequestError,
    ServerError,
    TransientError,
)
from .metrics import BackendMetrics

T = TypeVar("T")

DEFAULT_RETRIES: Final = 3  # nydusd retries on-demand reads 3 times (§4.5 `retry_limit`)


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The connection keys common to registry, oss and s3 (§4.5)."""

    skip_verify: bool = False
    ca_cert_files: tuple[str, ...] = ()
    timeout: float = 5.0  # seconds for the whole request; 0 = no limit
    connect_timeout: float = 5.0  # seconds; 0 = no limit
    retry_limit: int = 0  # 0 = nydusd's fixed 3 retries


def _verify(settings: HttpSettings) -> ssl.SSLContext | bool:
    if settings.skip_verify:
        return False
    if not settings.ca_cert_files:
        return True
    context = ssl.create_default_context()
    for path in settings.ca_cert_files:
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(f"ca_cert_files: cannot load {path}: {exc}") from exc
    return context


def make_client(
    settings: HttpSettings,
    *,
    proxy: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: httpx.Auth | None = None,
) -> httpx.AsyncClient:
    """An AsyncClient honouring `settings`; the caller owns it and must `aclose` it.

    `transport` replaces the network (tests pass an httpx.MockTransport).
    """
    # httpx applies its timeout per phase; `timeout` bounds reads/writes/pool waits and
    # `connect_timeout` the connect, which is the closest httpx has to nydusd's pair.
    whole = settings.timeout or None
    timeout = httpx.Timeout(whole, connect=settings.connect_timeout or None)
    return httpx.AsyncClient(
        verify=_verify(settings),
        timeout=timeout,
        proxy=proxy,
        transport=transport,
        auth=auth,
        follow_redirects=False,
        trust_env=False,
    )


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn httpx exceptions raised inside the block into BackendErrors about `what`."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"{what}: timed out ({type(exc).__name__})") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        raise ConnectionLost(f"{what}: {type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise BackendError(f"{what}: {type(exc).__name__}: {exc}") from exc


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Raise the BackendError matching an unsuccessful HTTP status."""
    status = response.status_code
    if status < 300:
        return
    text = f"{what}: HTTP {status} from {response.request.url.host}"
    if status == 404:
        raise BlobNotFound(text)
    if status in (401, 403):
        raise AuthError(text)
    if status >= 500 or status in (408, 429):
        raise ServerError(text)
    raise RequestError(text)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to retry a TransientError and how long to wait in between.

    The delay before retry n (0-based) is `min(max_delay, base_delay * factor**n)`, scaled
    by a random factor in [1 - jitter, 1] so that many clients do not retry in lockstep.
    """

    retries: int = DEFAULT_RETRIES
    base_delay: float = 0.1  # seconds
    factor: float = 2.0
    max_delay: float = 5.0  # seconds
    jitter: float = 0.5  # fraction of the delay that may be shaved off at random
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @classmethod
    def from_settings(cls, settings: HttpSettings) -> RetryPolicy:
        return cls(retries=settings.retry_limit if settings.retry_limit > 0 else DEFAULT_RETRIES)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        nominal = min(self.max_delay, self.base_delay * self.factor**attempt)
        return nominal * (1.0 - self.jitter * self.rng.random())

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether failure `exc` of attempt `attempt` (0-based) deserves another try."""
        return isinstance(exc, TransientError) and attempt < self.retries


async def retrying(policy: RetryPolicy, operation: Callable[[], Awaitable[T]]) -> T:
    """Run `operation` until it succeeds or `policy` gives up; the last error propagates."""
    attempt = 0
    while True:
        try:
            return await operation()
        except BackendError as exc:
            if not policy.should_retry(exc, attempt):
                raise
        await trio.sleep(policy.delay(attempt))
        attempt += 1


_CONTENT_RANGE: Final = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


async def measured_read(
    metrics: BackendMetrics,
    policy: RetryPolicy,
    blob: BlobId,
    offset: int,
    size: int,
    fetch: Callable[[], Awaitable[bytes]],
) -> bytes:
    """A ranged blob read under the retry policy, recorded in `metrics` whatever happens."""
    check_range(blob, offset, size)
    if size == 0:
        return b""
    started = trio.current_time()
    try:
        data = await retrying(policy, fetch)
    except BaseException:
        metrics.record(blob, offset, size, trio.current_time() - started, False)
        raise
    metrics.record(blob, offset, size, trio.current_time() - started, True)
    return data


def range_header(offset: int, size: int) -> str:
    """The Range header for `size` (> 0) bytes at `offset` (RFC 9110 §14.2)."""
    return f"bytes={offset}-{offset + size - 1}"


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """(first, last, total) of a `Content-Range: bytes first-last/total` header."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        raise CorruptData(f"unparseable Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


async def read_ranged_body(response: httpx.Response, offset: int, size: int, what: str) -> bytes:
    """Exactly `size` bytes at `offset` from a streamed answer to a Range request.

    A 206 must cover exactly the range asked for; a 200 (server ignored Range) is skipped
    forward to `offset`. Reading stops after `size` bytes, so a lying or endless body cannot
    make us buffer more. The caller closes the response. A body that ends early is a
    ConnectionLost (worth a retry), wrong headers are CorruptData.
    """
    raise_for_status(response, what)
    skip = 0
    if response.status_code == 206:
        first, last, _ = parse_content_range(response.headers.get("content-range", ""))
        if (first, last) != (offset, offset + size - 1):
            raise CorruptData(
                f"{what}: asked for {offset}-{offset + size - 1}, got Content-Range {first}-{last}"
            )
    elif response.status_code == 200:
        skip = offset
    else:
        raise RequestError(f"{what}: unexpected HTTP {response.status_code} to a range read")
    parts: list[bytes] = []
    have = 0
    with translate_errors(what):
        async for piece in response.aiter_bytes():
            if skip:
                dropped = min(skip, len(piece))
                piece, skip = piece[dropped:], skip - dropped
            parts.append(piece[: size - have])
            have += len(parts[-1])
            if have == size:
                break
    if have != size:
        raise ConnectionLost(f"{what}: body ended after {have} of {size} bytes")
    return b"".join(parts)
