"""The one storage interface every backend and the cache implement.

A blob is an immutable byte string named by its hex sha256 (`BlobId`, no `sha256:` prefix,
nydusd-interface §5). Backends are transports in the httpx sense: they know how to fetch
bytes and nothing about RAFS. The blob cache (`backends.cache`) wraps a backend and offers
the same three methods, plus a chunk-granular read of its own.

Cancellation: every method may be cancelled; a cancelled read leaves no partial state that
a later read could mistake for data. Callers set deadlines with trio cancel scopes; no
method takes a timeout (the configured HTTP timeouts are per request, inside the backend).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NewType, Protocol, runtime_checkable

from .errors import BackendError, CorruptData

BlobId = NewType("BlobId", str)

_BLOB_ID: Final = re.compile(r"[0-9a-f]{64}")


def blob_id(text: str) -> BlobId:
    """Validate and normalise a blob id (an optional `sha256:` prefix is dropped).

    The id ends up in file names and URLs, so anything but 64 lowercase hex digits is refused
    rather than escaped.
    """
    bare = text.removeprefix("sha256:")
    if not _BLOB_ID.fullmatch(bare):
        raise BackendError(f"invalid blob id {text!r}: want 64 lowercase hex digits")
    return BlobId(bare)


@dataclass(frozen=True, slots=True)
class BlobRange:
    """A byte range of one blob."""

    blob_id: BlobId
    offset: int  # bytes from the start of the blob
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.offset + self.size

    def __str__(self) -> str:
        return f"blob {self.blob_id} [{self.offset}, {self.end})"


@runtime_checkable
class BlobBackend(Protocol):
    """Read-only access to immutable blobs."""

    async def blob_size(self, blob_id: BlobId) -> int:
        """The blob's size in bytes.

        Raises:
            BlobNotFound, AuthError, TransientError (after retries), BackendError.
        """
        ...

    async def read_range(self, blob_id: BlobId, offset: int, size: int) -> bytes:
        """Exactly `size` bytes of the blob starting at `offset`.

        A short answer is never returned: a range past the end of the blob, or a body that
        ends early, raises CorruptData (or the transient error that caused it).
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files; further calls are an error."""
        ...


def check_range(blob: BlobId, offset: int, size: int) -> None:
    """Refuse negative ranges before they reach a transport."""
    if offset < 0 or size < 0:
        raise BackendError(f"blob {blob}: invalid range offset={offset} size={size}")


def check_length(blob: BlobId, offset: int, size: int, data: bytes) -> bytes:
    """Return `data` if it is exactly `size` bytes, else raise CorruptData."""
    if len(data) != size:
        raise CorruptData(f"blob {blob} [{offset}, {offset + size}): got {len(data)} bytes, "
                          f"expected {size}")
    return data
