"""Errors of the backends package.

    BackendError               base; carries the errno a guest would see (EIO by default)
    ├── ConfigError            a configuration key is unknown, missing or has a bad value (EINVAL)
    ├── BlobNotFound           the backend has no such blob (ENOENT)
    ├── AuthError              credentials refused or a token could not be obtained (EACCES)
    ├── TransientError         worth retrying: the next attempt may succeed
    │   ├── BackendTimeout     connect or read timed out (ETIMEDOUT)
    │   ├── ConnectionLost     reset, refused, truncated body, protocol error (ECONNRESET)
    │   └── ServerError        HTTP 5xx (EIO)
    ├── RequestError           the backend refused the request for good (4xx other than above)
    └── CorruptData            bytes arrived but are wrong: short read, bad digest (EIO)
        └── CorruptCache       the on-disk cache is inconsistent with its record

Every error names the blob (and chunk or range) it is about. Errors of httpx are translated
in exactly one place (`backends.http.translate_errors`), OSErrors of local files where they
enter; callers above this package only ever see BackendError. Only this module mentions
errno values.
"""

from __future__ import annotations

import errno as _errno


class BackendError(Exception):
    """Base of every backends error; `errno` is what a guest would be told."""

    errno: int = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class ConfigError(BackendError):
    """The configuration names an unknown key, lacks a required one or has a bad value."""

    errno = _errno.EINVAL


class BlobNotFound(BackendError):
    """The backend does not hold the blob (HTTP 404, missing file)."""

    errno = _errno.ENOENT


class AuthError(BackendError):
    """The backend refused our credentials (HTTP 401/403 after the auth flow ran)."""

    errno = _errno.EACCES


class TransientError(BackendError):
    """A failure that a retry may cure; the retry policy only ever retries these."""


class BackendTimeout(TransientError):
    """Connecting or reading took longer than the configured timeout."""

    errno = _errno.ETIMEDOUT


class ConnectionLost(TransientError):
    """The connection broke: refused, reset, or the body ended early."""

    errno = _errno.ECONNRESET


class ServerError(TransientError):
    """The server answered 5xx (or 429)."""


class RequestError(BackendError):
    """The server refused the request and retrying will not change that."""


class CorruptData(BackendError):
    """Bytes were delivered but are not the ones asked for (length or digest mismatch)."""


class CorruptCache(CorruptData):
    """A cache file disagrees with its chunk map (wrong size, unreadable)."""


def from_os_error(exc: OSError, what: str) -> BackendError:
    """The BackendError for an OSError raised while touching local file `what`."""
    if isinstance(exc, FileNotFoundError):
        return BlobNotFound(f"{what}: {exc.strerror}")
    return BackendError(f"{what}: {exc.strerror or exc}", errno=exc.errno or _errno.EIO)
