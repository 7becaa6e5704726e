"""nydusd's API error model: a status code plus the Rust Debug rendering of the error.

reference/nydusd-interface.md section 2.2. Every API-level failure is answered with
`{"code": "UNDEFINED", "message": <Debug text>}`; Kata shows `message` to users and
upstream's smoke tests substring-match it, so the common spellings are reproduced:

    404 NoRoute
    400 BadRequest
    400 QueryString("'mountpoint' should be specified in query string")
    400 ParseBody(Error("missing field `config`", line: 1, column: 37))
    500 Mount(MountFilesystem(Other("object or filesystem already exists")))
    501 Upgrade(DaemonAbnormal(Unsupported))
    400 Configure(DaemonAbnormal(UnexpectedEvent("Start")))
    404 GlobalMetrics(Metrics(Stats(NoCounter)))

Two layers, as upstream: the daemon side raises `ApiFailure` (an ApiError: status plus the
inner Debug text, e.g. `MountFilesystem(Other("..."))`) and the route wraps it in the
HttpError variant of its endpoint (`Mount(...)`). Status rule (upstream's
translate_status_code): not ready 503, unsupported 501, unexpected event 400, missing
metrics counter 404, anything else 500.
"""

from __future__ import annotations

import json
from typing import Final

from vhostfs.api.http import Response


def rust_str(text: str) -> str:
    """A string as Rust's Debug prints it: double quotes, backslash escapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


class ApiFailure(Exception):
    """An error of the daemon behind the API (nydusd's ApiError)."""

    def __init__(self, status: int, debug: str) -> None:
        super().__init__(debug)
        self.status = status
        self.debug = debug  # Debug rendering of the ApiError, without the HttpError wrapper

    def within(self, variant: str) -> HttpFailure:
        return HttpFailure(self.status, f"{variant}({self.debug})")


class HttpFailure(Exception):
    """A complete error reply: status and the whole message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        return Response.json(self.status, {"code": "UNDEFINED", "message": self.message})


def other(kind: str, message: str, status: int = 500) -> ApiFailure:
    """`<kind>(Other("<message>"))`, e.g. MountFilesystem(Other("...")) (500)."""
    return ApiFailure(status, f"{kind}(Other({rust_str(message)}))")


def daemon_error(message: str) -> ApiFailure:
    """A daemon-side failure reported through a metrics-style endpoint (500)."""
    return ApiFailure(500, f"Metrics(Daemon(Other({rust_str(message)})))")


def mount_error(message: str) -> ApiFailure:
    return other("MountFilesystem", message)


ALREADY_EXISTS: Final = "object or filesystem already exists"
NOT_FOUND: Final = "object or filesystem doesn't exist"
NOT_RAFS: Final = "filesystem type mismatch, expect RAFS"

NO_ROUTE: Final = HttpFailure(404, "NoRoute")
BAD_REQUEST: Final = HttpFailure(400, "BadRequest")
UNSUPPORTED: Final = ApiFailure(501, "DaemonAbnormal(Unsupported)")
MOUNT_UNSUPPORTED: Final = ApiFailure(501, "MountFilesystem(Unsupported)")
NO_COUNTER: Final = ApiFailure(404, "Metrics(Stats(NoCounter))")
PAYLOAD_TYPE: Final = ApiFailure(500, "ResponsePayloadType")
INFLIGHT_UNSUPPORTED: Final = ApiFailure(500, "Metrics(Daemon(Unsupported))")


def query_string(key: str) -> HttpFailure:
    message = f"'{key}' should be specified in query string"
    return HttpFailure(400, f"QueryString({rust_str(message)})")


def parse_body(message: str, line: int, column: int) -> HttpFailure:
    """serde_json's error as nydusd renders it inside ParseBody(...)."""
    return HttpFailure(400, f"ParseBody(Error({rust_str(message)}, line: {line}, "
                            f"column: {column}))")


def body_error(body: bytes, exc: ValueError) -> HttpFailure:
    """ParseBody for invalid JSON, with the position serde would report (1-based)."""
    if isinstance(exc, json.JSONDecodeError):
        return parse_body(exc.msg, exc.lineno, exc.colno)
    return parse_body(str(exc), *end_position(body))


def end_position(body: bytes) -> tuple[int, int]:
    """Line and column of the last byte (where serde reports a missing field)."""
    text = body.decode("utf-8", "replace")
    lines = text.split("\n")
    return len(lines), len(lines[-1])
