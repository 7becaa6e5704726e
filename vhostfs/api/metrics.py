"""The `/api/v1/metrics*` bodies, shaped as nydusd's (reference section 7).

Which counter an `id` names (section 7.1): filesystem metrics and backend metrics are keyed
by the RAFS mountpoint, blob-cache metrics by the configuration's `id`; without an `id` the
request works only when exactly one candidate exists; otherwise 404
`<Variant>(Metrics(Stats(NoCounter)))`. Passthrough mounts have no metrics.

What is real and what is a placeholder:

* backend and blob cache: the live counters of the mount's backend and blob cache, from
  the filesystem's `metrics()` (`backends.metrics` objects), unchanged; blob-cache fields
  the cache does not keep (prefetch timing) are 0.
* filesystem-wide (`/metrics`), per-file (`/metrics/files`) and access pattern
  (`/metrics/pattern`): the RAFS filesystem keeps no per-operation counters, so these have
  nydusd's exact shape with zero counters (empty maps and lists), and the `*_enabled`
  flags report what the configuration asked for.
* inflight: 500 `InflightMetrics(Metrics(Daemon(Unsupported)))`, as nydusd in virtio-fs mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from backends.metrics import BackendMetrics
from vhostfs.api import errors
from vhostfs.api.mounts import RAFS, MountRecord
from vhostfs.errors import FsError
from vhostfs.fs.pseudo import path_key

FOPS: Final = 15  # fop index table, section 7.5
BUCKETS: Final = 8  # size and latency buckets, section 7.6
MAX_EVENTS: Final = 500
MAX_EVENTS_SIZE: Final = 51_200


def _bodies(record: MountRecord) -> dict[str, dict[str, object]]:
    """The mount's own §7.4 bodies: {"backend": ..., "blobcache": ...} (blobcache if cached)."""
    metrics = getattr(record.fs, "metrics", None)
    return metrics() if callable(metrics) else {}


def _rafs(records: Iterable[MountRecord]) -> list[MountRecord]:
    return [r for r in records if r.backend_type == RAFS]


def select_mount(records: Iterable[MountRecord], id: str | None) -> MountRecord:
    """The RAFS mount an `id` (mountpoint) names; the only one when `id` is absent."""
    mounts = _rafs(records)
    if id is None:
        if len(mounts) != 1:
            raise errors.NO_COUNTER
        return mounts[0]
    try:
        key = path_key(id)
    except FsError:
        raise errors.NO_COUNTER from None
    for record in mounts:
        if record.mountpoint == key:
            return record
    raise errors.NO_COUNTER


def global_metrics(records: Iterable[MountRecord], id: str | None) -> dict[str, object]:
    record = select_mount(records, id)
    rafs = record.storage.rafs if record.storage is not None else None
    return {
        "files_account_enabled": bool(rafs and rafs.iostats_files),
        "access_pattern_enabled": bool(rafs and rafs.access_pattern),
        "record_latest_read_files_enabled": bool(rafs and rafs.latest_read_files),
        "measure_latency": True,
        "id": record.mountpoint,
        "nr_opens": 0,
        "data_read": 0,
        "block_count_read": [0] * BUCKETS,
        "fop_hits": [0] * FOPS,
        "fop_errors": [0] * FOPS,
        "fop_cumulative_latency_total": [0] * FOPS,
        "read_latency_dist": [0] * BUCKETS,
    }


def files_metrics(records: Iterable[MountRecord], id: str | None, latest: bool) -> object:
    select_mount(records, id)
    return [] if latest else {}


def access_patterns(records: Iterable[MountRecord], id: str | None) -> list[object]:
    select_mount(records, id)
    return []


def backend_metrics(records: Iterable[MountRecord], id: str | None) -> dict[str, object]:
    record = select_mount(records, id)
    body = _bodies(record).get("backend")
    if not body:
        kind = record.storage.backend_type if record.storage is not None else "localfs"
        body = BackendMetrics(kind).to_json()
    return body


def blobcache_metrics(records: Iterable[MountRecord], id: str | None) -> dict[str, object]:
    """Keyed by the configuration `id`; mounts without a blob cache do not count."""
    caches: list[tuple[str, dict[str, object]]] = []
    for record in _rafs(records):
        body = _bodies(record).get("blobcache")
        if body is not None:
            caches.append((record.config_id, body))
    if id is not None:
        caches = [c for c in caches if c[0] == id]
    elif len(caches) != 1:
        raise errors.NO_COUNTER
    if not caches:
        raise errors.NO_COUNTER
    body = dict(caches[0][1])
    for name in ("prefetch_cumulative_time_millis", "prefetch_begin_time_secs",
                 "prefetch_begin_time_millis", "prefetch_end_time_secs",
                 "prefetch_end_time_millis"):
        body.setdefault(name, 0)
    return body


def events() -> dict[str, object]:
    """The backend error ring: vhostfs records no events yet, so it is always empty."""
    return {"max_errors": MAX_EVENTS, "total_errors": 0, "max_size": MAX_EVENTS_SIZE,
            "total_size": 0, "errors": []}
