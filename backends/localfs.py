"""Blobs stored as plain files (nydusd's `localfs` backend, nydusd-interface §4.5).

A blob is `blob_file` if set, else `<dir>/<blob_id>`; if that is missing or empty, the first
non-empty `<alt_dir>/<blob_id>`. Files are opened once and kept; reads are `os.pread` in a
worker thread limited by the CapacityLimiter the caller passes (one for the whole daemon,
so slow disks cannot eat every thread). The backend owns its fds and closes them in
`aclose`.
"""

from __future__ import annotations

import os

import trio

from .base import BlobId, check_length, check_range
from .config import LocalFsConfig
from .errors import BlobNotFound, CorruptData, from_os_error
from .metrics import BackendMetrics


class LocalFsBackend:
    """BlobBackend over files in local directories."""

    def __init__(self, config: LocalFsConfig, limiter: trio.CapacityLimiter) -> None:
        self._config = config
        self._limiter = limiter
        self._fds: dict[BlobId, int] = {}
        self._lock = trio.Lock()  # one open per blob even under concurrent first reads
        self.metrics = BackendMetrics("localfs")

    def _candidates(self, blob: BlobId) -> list[str]:
        first = self._config.blob_file or os.path.join(self._config.dir, blob)
        return [first, *(os.path.join(d, blob) for d in self._config.alt_dirs)]

    def _open(self, blob: BlobId) -> int:
        for path in self._candidates(blob):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise from_os_error(exc, f"blob {blob} at {path}") from exc
            if os.fstat(fd).st_size > 0:
                return fd
            os.close(fd)  # an empty placeholder: look in the alternative directories
        raise BlobNotFound(f"blob {blob}: not in {', '.join(self._candidates(blob))}")

    async def _fd(self, blob: BlobId) -> int:
        async with self._lock:
            fd = self._fds.get(blob)
            if fd is None:
                fd = await trio.to_thread.run_sync(self._open, blob, limiter=self._limiter)
                self._fds[blob] = fd
            return fd

    async def blob_size(self, blob_id: BlobId) -> int:
        fd = await self._fd(blob_id)
        return os.fstat(fd).st_size

    async def read_range(self, blob_id: BlobId, offset: int, size: int) -> bytes:
        check_range(blob_id, offset, size)
        fd = await self._fd(blob_id)
        started = trio.current_time()
        try:
            data = await trio.to_thread.run_sync(os.pread, fd, size, offset,
                                                 limiter=self._limiter)
        except OSError as exc:
            self.metrics.record(blob_id, offset, size, trio.current_time() - started, False)
            raise from_os_error(exc, f"blob {blob_id}") from exc
        ok = len(data) == size
        self.metrics.record(blob_id, offset, size, trio.current_time() - started, ok)
        if not ok:
            raise CorruptData(f"blob {blob_id} [{offset}, {offset + size}): file has only "
                              f"{len(data)} bytes there")
        return check_length(blob_id, offset, size, data)

    async def aclose(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
