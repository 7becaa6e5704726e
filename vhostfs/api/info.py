"""What the daemon says about itself: build information and DaemonInfo.

reference/nydusd-interface.md sections 1.2 (`--version` lines) and 2.4 (DaemonInfo).
runtime-rs refuses a DaemonInfo whose `version` object lacks any of its five strings
(`package_ver`, `git_commit`, `build_time`, `profile`, `rustc`), so all five are always
present; `rustc` names the Python that runs us, honestly.

A RAFS mount's `config` is its configuration re-rendered as nydusd's v2 JSON with secrets
removed. Upstream blanks OSS keys and registry `auth`/`registry_token` but leaks S3 keys
(section 9: "security gaps not to copy"); here every credential is blanked.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from backends.config import LocalFsConfig, ObjectStoreConfig, RegistryConfig
from backends.nydusconfig import StorageConfig
from backends.prefetch import PrefetchSettings

_PACKAGE_DIR: Final = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True, slots=True)
class BuildInfo:
    package_ver: str
    git_commit: str
    build_time: str
    profile: str
    rustc: str  # the field name runtime-rs requires; holds the Python version


def _git_commit(start: Path) -> str:
    """The checkout's HEAD commit when running from a git checkout, else "unknown"."""
    for directory in (start, *start.parents):
        git = directory / ".git"
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if head.startswith("ref: "):
                ref = git / head[5:]
                if ref.is_file():
                    return ref.read_text().strip()
                packed = git / "packed-refs"
                for line in packed.read_text().splitlines() if packed.is_file() else ():
                    if line.endswith(" " + head[5:]):
                        return line.split()[0]
                return "unknown"
            return head
        except OSError:
            return "unknown"
    return "unknown"


@functools.cache
def build_info() -> BuildInfo:
    try:
        version = importlib.metadata.version("vhostfs")
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    built = datetime.fromtimestamp((_PACKAGE_DIR / "__init__.py").stat().st_mtime, UTC)
    return BuildInfo(
        package_ver=f"v{version}",
        git_commit=_git_commit(_PACKAGE_DIR),
        build_time=built.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        profile="release",
        rustc=f"{platform.python_implementation()} {platform.python_version()} (vhostfs)",
    )


def version_text() -> str:
    """`--version` output in nydusd's layout (tab-separated "Name: value" lines)."""
    info = build_info()
    return (f"Version: \t{info.package_ver}\nGit Commit: \t{info.git_commit}\n"
            f"Build Time: \t{info.build_time}\nProfile: \t{info.profile}\n"
            f"Rustc: \t\t{info.rustc}\n")


def mounted_time(ns: int) -> str:
    """nydusd's `mounted_time`: UTC, nanoseconds, `+00:00:00` offset."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{nanos:09d} +00:00:00"


# -- configuration, re-rendered as v2 -----------------------------------------------------

_SECRETS: Final = frozenset({"auth", "registry_token", "access_key_id", "access_key_secret"})


def _prefetch(p: PrefetchSettings) -> dict[str, object]:
    return {"enable": p.enable, "threads": p.threads_count, "batch_size": p.merging_size,
            "bandwidth_limit": p.bandwidth_rate, "prefetch_all": p.prefetch_all,
            "stream_prefetch": p.stream_prefetch}


def _backend(config: StorageConfig) -> dict[str, object]:
    backend = config.backend
    table: dict[str, object] = {}
    if isinstance(backend, RegistryConfig | ObjectStoreConfig):
        fields = dataclasses.asdict(backend)
        http = fields.pop("http")
        fields.pop("kind", None)
        table = {**fields, **http}
        for key in _SECRETS & table.keys():
            table[key] = None if key in ("auth", "registry_token") else ""
    elif isinstance(backend, LocalFsConfig):
        table = dataclasses.asdict(backend)
    return {"type": config.backend_type, config.backend_type: table or None}


def render_config(config: StorageConfig) -> dict[str, object]:
    """`config` as DaemonInfo shows it: v2 shape, credentials blanked."""
    cache_dir = "fscache" if config.cache_type == "fscache" else "filecache"
    return {
        "version": 2,
        "id": config.id,
        "backend": _backend(config),
        "external_backends": [],
        "cache": {
            "type": config.cache_type,
            "compressed": config.cache_compressed,
            "validate": config.cache_validate,
            "prefetch": _prefetch(config.cache_prefetch),
            cache_dir: {"work_dir": config.work_dir,
                        "disable_indexed_map": config.disable_indexed_map},
        },
        "rafs": {
            "mode": config.rafs.mode,
            "batch_size": config.rafs.batch_size,
            "validate": config.rafs.validate,
            "enable_xattr": config.rafs.enable_xattr,
            "iostats_files": config.rafs.iostats_files,
            "access_pattern": config.rafs.access_pattern,
            "latest_read_files": config.rafs.latest_read_files,
            "prefetch": _prefetch(config.rafs.prefetch),
        },
        "overlay": None,
    }


# Superblock constants nydusd reports (rafs/src/metadata/layout): magic and version per format.
_MAGIC: Final = {5: 0x5241_4653, 6: 0xE0F5_E1E2}
_VERSION: Final = {5: 0x500, 6: 0x600}
_TIMEOUT: Final = {"secs": 2**32, "nanos": 0}  # entry/attr timeout of an immutable image


def superblock_summary(fs: object) -> dict[str, object]:
    """`GET /daemon/backend`: nydusd's RAFS superblock summary (nydusctl reads it).

    Fields the image reader does not expose (table offsets, flags) are 0.
    """
    image = getattr(fs, "image", None)
    version = int(getattr(image, "version", 0))
    summary: dict[str, object] = dict.fromkeys(
        ("sb_size", "batch_size", "flags", "inode_table_entries", "inode_table_offset",
         "blob_table_size", "blob_table_offset", "extended_blob_table_offset",
         "extended_blob_table_entries", "blob_device_table_count", "blob_device_table_offset",
         "prefetch_table_offset", "meta_blkaddr", "root_nid", "chunk_table_offset",
         "chunk_table_size"), 0)
    if image is None:
        return summary
    summary.update({
        "magic": _MAGIC.get(version, 0),
        "version": _VERSION.get(version, 0),
        "root_inode": int(image.root_ino),
        "chunk_size": int(image.chunk_size),
        "inodes_count": int(image.inode_count),
        "blob_table_size": len(image.blobs),
        "prefetch_table_entries": len(image.prefetch_inos),
        "attr_timeout": _TIMEOUT,
        "entry_timeout": _TIMEOUT,
        "is_chunk_dict": False,
        "root_nid": int(image.root_ino) if version == 6 else 0,
    })
    return summary


def daemon_info(*, state: str, daemon_id: str | None, supervisor: str | None,
                backends: dict[str, object] | None) -> dict[str, object]:
    """DaemonInfo; `backends` is None for /api/v2/daemon (upstream's null)."""
    return {
        "version": dataclasses.asdict(build_info()),
        "id": daemon_id,
        "supervisor": supervisor,
        "state": state,
        "backend_collection": backends,
    }
