"""Lazy loading vs pull-and-unpack: time until a QEMU guest has read a container's startup
files, starting from an empty local cache.

* lazy: `vhostfs virtiofs --bootstrap B --config C.json` with the registry backend and an
  empty blobcache work_dir; the guest mounts the share and reads the startup set, so only
  the chunks of those files are fetched (plus the blob cache's read amplification).
* oci: what a runtime does without lazy loading: GET the whole blob from the same registry,
  unpack it with `rafs unpack` (our unpacker: decompress + verify every chunk), then serve
  the unpacked tree with `vhostfs virtiofs --shared-dir` and let the guest read the same set.

Both are timed on the wall clock from "nothing local" to "the guest has read (and checked the
sha256 of) every startup file", guest boot included (the same in both; measured on its own
as `boot`). The image (>= 500 MiB of random, incompressible data; the startup set is < 10%)
is built once with our builder and kept under .cache/bench_lazy/ (--rebuild to redo).

    hack/bench_lazy [--rounds N] [--json PATH] [--rebuild]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import httpx

import rafs
from tests.integration.backends.servers import Registry, registry
from tests.support import vm

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
CACHE: Final = REPO_ROOT / ".cache" / "bench_lazy"
MIB: Final = 1 << 20
REPO: Final = "bench/app"
# The image: a "container" whose startup touches a binary, a few libraries and configs, and
# a large data set it never reads at startup.
STARTUP: Final = {
    "/app/bin/server": 14 * MIB,
    "/app/lib/libcore.so": 6 * MIB,
    "/app/lib/libnet.so": 3 * MIB,
    "/app/lib/libssl.so": 4 * MIB,
    "/app/etc/server.toml": 6000,
    "/app/etc/locale.conf": 300,
}
BULK: Final = {f"/data/part{i:02d}.bin": 9 * MIB for i in range(56)}
BULK_SMALL: Final = {f"/usr/share/doc/pkg{i:03d}/README": 20000 + i for i in range(200)}


def build_image(rebuild: bool) -> tuple[Path, Path, str, dict[str, str]]:
    """(bootstrap, blob, blob id, startup path -> sha256), built once and cached."""
    manifest = CACHE / "manifest.json"
    if manifest.exists() and not rebuild:
        m = json.loads(manifest.read_text())
        return Path(m["bootstrap"]), Path(m["blob"]), m["blob_id"], m["startup"]
    shutil.rmtree(CACHE, ignore_errors=True)
    source = CACHE / "src"
    rng = random.Random(42)
    digests: dict[str, str] = {}
    for path, size in {**STARTUP, **BULK, **BULK_SMALL}.items():
        target = source / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        target.write_bytes(data)
        if path in STARTUP:
            digests[path] = hashlib.sha256(data).hexdigest()
    print("building the image (once) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "rafs", "build", str(source), "-o",
                    str(CACHE / "image"), "--compressor", "zstd", "-q"], check=True)
    shutil.rmtree(source)  # the bench reads the image, not the source
    image = rafs.open_image(CACHE / "image" / "bootstrap")
    blob_id = image.blobs[0].blob_id
    blob = CACHE / "image" / "blobs" / blob_id
    manifest.write_text(json.dumps({"bootstrap": str(CACHE / "image" / "bootstrap"),
                                    "blob": str(blob), "blob_id": blob_id,
                                    "startup": digests}))
    return CACHE / "image" / "bootstrap", blob, blob_id, digests


def guest_script(tag: str, paths: list[str]) -> str:
    # `vmtool now` brackets mount + reads: the guest-side cost, without the boot
    lines = ["echo start $(vmtool now)", f"mount -t virtiofs -o ro {tag} /mnt"]
    lines += [f"sha256sum /mnt{p}" for p in paths]
    lines += ["echo end $(vmtool now)"]
    return "\n".join(lines) + "\n"


def check_output(text: str, digests: dict[str, str]) -> float:
    """Seconds between the guest's start and end marks, after checking every digest."""
    marks = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.split()[0] in ("start", "end")}
    got = {line.split()[1].removeprefix("/mnt"): line.split()[0] for line in text.splitlines()
           if line.split()[0] not in ("start", "end")}
    if got != digests:
        raise SystemExit(f"guest read wrong bytes: {got} != {digests}")
    return marks["end"] - marks["start"]


def serve_and_read(argv: list[str], work: Path, tag: str,
                   digests: dict[str, str]) -> tuple[float, float]:
    """Start a daemon, boot a guest that reads the startup set; (total, in-guest) seconds."""
    sock = Path(tempfile.mkdtemp(prefix="vfsb-", dir="/tmp")) / "s.sock"
    started = time.monotonic()
    with vm.start_daemon([*argv, "--sock", str(sock)], sock, log_path=work / f"{tag}.log"):
        dev = vm.VirtioFsDevice(sock, tag, log_path=work / f"{tag}.log")
        out = vm.run_guest(guest_script(tag, sorted(digests)), fs_devices=[dev],
                           timeout=600).check()
    elapsed = time.monotonic() - started
    shutil.rmtree(sock.parent, ignore_errors=True)
    return elapsed, check_output(out.text, digests)


def lazy_round(reg: Registry, bootstrap: Path, work: Path,
               digests: dict[str, str]) -> tuple[float, float]:
    cache = work / "blobcache"
    config = {"device": {"backend": {"type": "registry", "config": {
        "scheme": "http", "host": reg.host, "repo": REPO, "timeout": 60}},
        "cache": {"type": "blobcache", "config": {"work_dir": str(cache)}}},
        "mode": "direct"}
    cache.mkdir()
    (work / "lazy.json").write_text(json.dumps(config))
    argv = [sys.executable, "-m", "vhostfs", "virtiofs", "--bootstrap", str(bootstrap),
            "--config", str(work / "lazy.json")]
    return serve_and_read(argv, work, "lazy", digests)


def oci_round(reg: Registry, bootstrap: Path, blob_id: str, work: Path,
              digests: dict[str, str]) -> tuple[float, float, float, float]:
    """(total, download, unpack, in-guest) seconds."""
    started = time.monotonic()
    blobs = work / "blobs"
    blobs.mkdir()
    url = f"http://{reg.host}/v2/{REPO}/blobs/sha256:{blob_id}"
    with httpx.stream("GET", url, timeout=600) as reply, (blobs / blob_id).open("wb") as f:
        reply.raise_for_status()
        for piece in reply.iter_bytes(4 * MIB):
            f.write(piece)
    downloaded = time.monotonic()
    subprocess.run([sys.executable, "-m", "rafs", "unpack", str(bootstrap), "--blob-dir",
                    str(blobs), "--to-dir", str(work / "rootfs")], check=True)
    unpacked = time.monotonic()
    argv = [sys.executable, "-m", "vhostfs", "virtiofs", "--shared-dir", str(work / "rootfs")]
    _, in_guest = serve_and_read(argv, work, "oci", digests)
    return time.monotonic() - started, downloaded - started, unpacked - downloaded, in_guest


def fetched_bytes(reg: Registry, blob_id: str) -> int:
    lines = reg.log.matching(rf'"GET /v2/[^ ]*/blobs/sha256:{blob_id} [^"]*" 206 ')
    return sum(int(line.split('" 206 ')[1].split()[0]) for line in lines)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    bootstrap, blob, blob_id, digests = build_image(args.rebuild)
    blob_size = blob.stat().st_size
    startup = sum(STARTUP.values())
    runs: dict[str, list[float]] = {k: [] for k in (
        "lazy", "lazy_in_guest", "oci", "oci_download", "oci_unpack", "oci_in_guest")}
    lazy_fetched: list[int] = []
    with tempfile.TemporaryDirectory(prefix="bench-lazy-") as tmp:
        root = Path(tmp)
        (root / "registry").mkdir()
        with registry(root / "registry") as reg:
            reg.store(REPO, blob_id, blob.read_bytes())
            for n in range(args.rounds):
                before = fetched_bytes(reg, blob_id)
                lazy, lazy_guest = lazy_round(reg, bootstrap, _fresh(root / f"lazy{n}"), digests)
                lazy_fetched.append(fetched_bytes(reg, blob_id) - before)
                oci = oci_round(reg, bootstrap, blob_id, _fresh(root / f"oci{n}"), digests)
                shutil.rmtree(root / f"oci{n}")
                for key, value in zip(runs, (lazy, lazy_guest, *oci), strict=True):
                    runs[key].append(value)
                print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s"
                                                     for k, v in runs.items()), file=sys.stderr)
    med = {k: median(v) for k, v in runs.items()}
    # what it costs to get the startup files, boot excluded: lazy pays in the guest's reads,
    # oci pays download + unpack before the boot, then (cheaper) reads
    lazy_cost = med["lazy_in_guest"]
    oci_cost = med["oci_download"] + med["oci_unpack"] + med["oci_in_guest"]
    result = {
        "accel": vm.accelerator(), "rounds": args.rounds,
        "blob_bytes": blob_size, "startup_bytes": startup,
        "startup_fraction": round(startup / blob_size, 4),
        "lazy_fetched_bytes": lazy_fetched,
        **{f"{k}_median_s": round(v, 2) for k, v in med.items()},
        "lazy_cost_s": round(lazy_cost, 2), "oci_cost_s": round(oci_cost, 2),
        "ratio_oci_over_lazy_total": round(med["oci"] / med["lazy"], 2),
        "ratio_oci_over_lazy_excluding_boot": round(oci_cost / lazy_cost, 2),
        "runs_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
