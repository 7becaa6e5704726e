"""Request signers for object stores: AWS Signature Version 4 and Alibaba OSS (v1).

Pure functions: they take the parts of a request and a timestamp and return the headers
to add. No clock, no I/O, so they are tested against the providers' published examples
(AWS SigV4 test suite `get-vanilla*`, the S3 "GET object with Range" example; the OSS
"PUT /nelson" example).

SigV4 (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html):

    canonical request = METHOD \\n URI \\n QUERY \\n HEADERS \\n SIGNED \\n sha256(payload)
    string to sign    = AWS4-HMAC-SHA256 \\n <amz-date> \\n <date>/<region>/<service>/aws4_request
                        \\n sha256(canonical request)
    key               = HMAC chain "AWS4"+secret -> date -> region -> service -> aws4_request

OSS v1: base64(HMAC-SHA1(secret, VERB \\n Content-MD5 \\n Content-Type \\n Date \\n
x-oss-* headers (lowercase, sorted, `name:value\\n`) + /bucket/object)).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Final
from urllib.parse import quote

EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
ALGORITHM: Final = "AWS4-HMAC-SHA256"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str

    @property
    def anonymous(self) -> bool:
        return not self.access_key_id


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """RFC 3986 percent-encoding of everything but unreserved characters (SigV4 rules)."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(query: list[tuple[str, str]]) -> str:
    pairs = sorted((uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False))
                   for k, v in query)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    folded: dict[str, str] = {}
    for name, value in headers.items():
        folded[name.strip().lower()] = " ".join(value.strip().split())
    names = sorted(folded)
    return "".join(f"{n}:{folded[n]}\n" for n in names), ";".join(names)


def sigv4_headers(*, method: str, path: str, query: list[tuple[str, str]],
                  headers: Mapping[str, str], payload_sha256: str, credentials: Credentials,
                  region: str, service: str, now: datetime,
                  content_sha256_header: bool = True) -> dict[str, str]:
    """The headers that sign a request with SigV4: x-amz-date, (x-amz-content-sha256), and
    Authorization.

    Args:
        path: the request path, already as it goes on the wire (S3 encodes each key once).
        headers: the headers to sign; must include `host`.
        payload_sha256: hex sha256 of the body (`EMPTY_SHA256` for a GET).
        now: the signing time (UTC).
        content_sha256_header: add `x-amz-content-sha256` (S3 requires it; the generic
            test suite does not use it).
    """
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    added = {"x-amz-date": amz_date}
    if content_sha256_header:
        added["x-amz-content-sha256"] = payload_sha256
    canonical, signed = _canonical_headers({**headers, **added})
    request = "\n".join([method.upper(), uri_encode(path, keep_slash=True) or "/",
                         canonical_query(query), canonical, signed, payload_sha256])
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    key = ("AWS4" + credentials.secret_access_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    added["Authorization"] = (f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
                              f"SignedHeaders={signed}, Signature={signature}")
    return added


def http_date(now: datetime) -> str:
    """RFC 7231 IMF-fixdate, as OSS wants in `Date`."""
    return format_datetime(now.astimezone(UTC), usegmt=True)


def oss_signature(*, method: str, content_md5: str, content_type: str, date: str,
                  headers: Mapping[str, str], resource: str, secret: str) -> str:
    """The base64 OSS v1 signature of a request whose canonical resource is `resource`."""
    oss = sorted((k.lower().strip(), v.strip()) for k, v in headers.items()
                 if k.lower().startswith("x-oss-"))
    to_sign = "\n".join([method.upper(), content_md5, content_type, date]) + "\n"
    to_sign += "".join(f"{k}:{v}\n" for k, v in oss) + resource
    digest = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def oss_headers(*, method: str, bucket: str, key: str, headers: Mapping[str, str],
                credentials: Credentials, now: datetime) -> dict[str, str]:
    """Date and Authorization headers that sign an OSS request for object `key`."""
    date = http_date(now)
    signature = oss_signature(method=method, content_md5=headers.get("Content-MD5", ""),
                              content_type=headers.get("Content-Type", ""), date=date,
                              headers=headers, resource=f"/{bucket}/{key}",
                              secret=credentials.secret_access_key)
    return {"Date": date, "Authorization": f"OSS {credentials.access_key_id}:{signature}"}
