"""Registry authentication: WWW-Authenticate parsing, bearer tokens, an httpx.Auth flow.

Specs: RFC 7235 §4.1 (challenge syntax), the Docker/OCI token protocol
(`GET <realm>?service=<service>&scope=repository:<repo>:pull`, JSON `token` or
`access_token`, optional `expires_in` seconds).

Theory of operation (`RegistryAuth.async_auth_flow`, one run per request):

1. A request to a host that is not the registry (or one of its mirrors) goes out untouched:
   credentials never follow a redirect to blob storage.
2. Otherwise it carries the best credential we have: a cached bearer token, else the
   configured `registry_token`, else Basic credentials once the registry asked for Basic.
3. On 401 the challenge is parsed. Bearer: fetch a token (with Basic credentials if we have
   them), cache it, retry once. Basic: retry once with credentials. A second 401, or a
   challenge we cannot answer, is returned to the caller, which maps it to AuthError.

Token fetches are single-flight (one lock per auth object): after a token expires, many
concurrent reads wait for one fetch instead of stampeding the token server. A token is
treated as expired `TOKEN_EARLY_REFRESH` seconds before its lifetime ends; nydusd assumes
600 s when the server gives none. The clock is trio's, so MockClock drives expiry in tests.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from .errors import AuthError

DEFAULT_TOKEN_TTL: Final = 600.0  # seconds; nydusd's assumption when expires_in is absent
TOKEN_EARLY_REFRESH: Final = 20.0  # seconds before expiry a token counts as stale (nydusd)

# RFC 7230 token and quoted-string, as used by RFC 7235 auth-params.
_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED: Final = r'"(?:[^"\\]|\\.)*"'
# Values: quoted-string, or (leniently, some registries do this) any bare run up to a comma.
_PARAM: Final = re.compile(rf"\s*({_TOKEN})\s*=\s*({_QUOTED}|[^,\s\"]+)\s*(?:,|$)")
_SCHEME: Final = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a WWW-Authenticate header."""

    scheme: str  # lowercased: "bearer", "basic", ...
    params: dict[str, str]  # parameter names lowercased, values unquoted


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a WWW-Authenticate value into its challenges (RFC 7235 §4.1).

    Lenient where registries are sloppy (spaces around `=`, trailing commas), strict enough
    that garbage yields no challenge rather than a wrong realm. Never raises.
    """
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        if header[pos] in ", \t":
            pos += 1
            continue
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        # A following `Scheme name=...` does not match _PARAM (no `=` after the scheme), so
        # the loop stops at the next challenge by itself.
        while (param := _PARAM.match(header, pos)) is not None:
            params[param.group(1).lower()] = _unquote(param.group(2))
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def basic_header(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def decode_auth(auth: str) -> tuple[str, str]:
    """Split nydusd's `auth` key (base64 of `user:pass`) into username and password."""
    try:
        user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError("registry auth: not base64 of user:password") from exc
    if not sep:
        raise AuthError("registry auth: decoded value has no ':'")
    return user, password


def parse_token_response(body: bytes, now: float) -> tuple[str, float]:
    """(token, absolute expiry time) from a token server's JSON answer."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError("token server answered with invalid JSON") from exc
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not token:
        raise AuthError("token server answer has no token")
    ttl = doc.get("expires_in")
    lifetime = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else DEFAULT_TOKEN_TTL
    return token, now + lifetime


@dataclass
class _Token:
    value: str
    expires: float  # trio clock seconds


class RegistryAuth(httpx.Auth):
    """Credentials for one repository of one registry, shared by all its requests."""

    def __init__(self, repo: str, hosts: set[str], *, credentials: tuple[str, str] | None = None,
                 registry_token: str = "", clock: Callable[[], float] = trio.current_time
                 ) -> None:
        self._repo = repo
        self._hosts = hosts  # "host:port" netlocs allowed to see credentials
        self._credentials = credentials
        self._registry_token = registry_token
        self._clock = clock
        self._token: _Token | None = None
        self._use_basic = False  # the registry asked for Basic
        self._challenge: Challenge | None = None  # last bearer challenge seen
        self._lock = trio.Lock()
        self.token_fetches = 0  # counter for tests and metrics

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response,
                                                                    None]:
        raise RuntimeError("RegistryAuth is async-only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request,
                                                                               httpx.Response]:
        if request.url.netloc.decode("ascii") not in self._hosts:
            yield request
            return
        if self._token_stale() and self._challenge is not None:
            async with self._lock:
                if self._token_stale():
                    token_response = yield self._token_request(self._challenge)
                    await self._store_token(token_response)
        self._authorize(request)
        response = yield request
        if response.status_code != 401:
            return
        challenge = self._pick(parse_challenges(response.headers.get("www-authenticate", "")))
        if challenge is None:
            return
        if challenge.scheme == "basic":
            self._use_basic = True
            self._authorize(request)
            yield request
            return
        self._challenge = challenge
        sent = self._token.value if self._token else None
        async with self._lock:
            # Another task may have refreshed the token while we waited: use that one.
            if self._token is None or self._token.value == sent:
                token_response = yield self._token_request(challenge)
                await self._store_token(token_response)
        self._authorize(request)
        yield request

    def _token_stale(self) -> bool:
        return self._token is None or self._clock() >= self._token.expires - TOKEN_EARLY_REFRESH

    def _pick(self, challenges: list[Challenge]) -> Challenge | None:
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme and (scheme == "bearer" or self._credentials):
                    return challenge
        return None

    def _authorize(self, request: httpx.Request) -> None:
        if self._token is not None:
            request.headers["Authorization"] = f"Bearer {self._token.value}"
        elif self._registry_token and not self._use_basic:
            request.headers["Authorization"] = f"Bearer {self._registry_token}"
        elif self._use_basic and self._credentials:
            request.headers["Authorization"] = basic_header(*self._credentials)

    def _token_request(self, challenge: Challenge) -> httpx.Request:
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise AuthError(f"bearer challenge without a usable realm: {challenge.params}")
        params = {"scope": challenge.params.get("scope", f"repository:{self._repo}:pull")}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        headers = {}
        if self._credentials:
            headers["Authorization"] = basic_header(*self._credentials)
        return httpx.Request("GET", realm, params=params, headers=headers)

    async def _store_token(self, response: httpx.Response) -> None:
        self.token_fetches += 1
        body = await response.aread()
        if response.status_code != 200:
            raise AuthError(f"token server {response.request.url.host} answered "
                            f"HTTP {response.status_code}")
        value, expires = parse_token_response(body, self._clock())
        self._token = _Token(value, expires)
