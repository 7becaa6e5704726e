"""The runtime configuration store behind `/api/v1/config` (nydus >= 2.4).

reference/nydusd-interface.md section 2.7: a process-wide map of `<id>:<key>` -> string,
where `id` is the mountpoint of a RAFS instance. Only three keys exist; any other key makes
the whole PUT fail with 500 `Configure(ResponsePayloadType)`, after the keys before it were
stored (upstream applies them one by one, and so do we).

What a stored value does here: nothing yet. Upstream's registry backend polls
`registry_auth` to pick up rotated credentials (nydus #1893); vhostfs's registry backend
takes its credentials from the mount's configuration only, so a rotated secret needs a
remount. The store still answers GET and PUT exactly as upstream, including returning stored
credentials in clear text to whoever can open the API socket (file permissions guard it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from vhostfs.api import errors

KEYS: Final = ("registry_auth", "proxy_url", "dragonfly_scheduler_endpoint")


class ConfigStore:
    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def update(self, id: str | None, values: Mapping[str, object]) -> None:
        """PUT: store each key under `id` (empty when absent); unknown key -> ApiFailure."""
        prefix = (id or "") + ":"
        for key, value in values.items():
            if key not in KEYS or not isinstance(value, str):
                raise errors.PAYLOAD_TYPE
            self._values[prefix + key] = value

    def get(self, id: str | None) -> dict[str, str]:
        """GET: `{key: value}` for `id`, or the raw `{"<id>:<key>": value}` map without one."""
        if id is None:
            return dict(self._values)
        prefix = id + ":"
        return {k[len(prefix):]: v for k, v in self._values.items() if k.startswith(prefix)}

    def seed(self, id: str, **values: str) -> None:
        """Values a new registry mount starts with (non-empty ones only)."""
        self.update(id, {k: v for k, v in values.items() if v})

    def forget(self, id: str) -> None:
        prefix = id + ":"
        for key in [k for k in self._values if k.startswith(prefix)]:
            del self._values[key]
