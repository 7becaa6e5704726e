"""Lazy loading end to end: a QEMU guest reads a RAFS image that our daemon pulls, chunk by
chunk, from Debian's `docker-registry` on loopback, through a verified blob cache.

The image is built by our builder (zstd, 64 KiB chunks, ~4 MiB of random files, so chunks
are stored as they are and each file owns its own stored ranges); its blob is placed in the
registry's storage under its RAFS blob id (which leaves the digest array out of the hash,
rafs-format §5.7, so a regular upload under that digest is refused);
`vhostfs virtiofs --bootstrap B --config C.json` serves it (registry backend, blobcache in a
per-test work_dir, `amplify_io: 0` so fetched ranges are exactly the touched chunks). The
registry's access log (status and body size of every blob GET) and the cache's chunk map
(`<blob>.blob.data.chunk_map`, one bit per cached chunk) are the evidence.

Faults go through a loopback proxy (tests/support/faultproxy.py) put in front of the registry.
Prefetch (`fs_prefetch`, `--prefetch-files`) is started by the daemon after attaching.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.backends.servers import Registry, TokenIssuer, registry
from tests.support import vm
from tests.support.faultproxy import Faults, fault_proxy
from tests.support.lazyimage import BuiltImage, chunk_map_bits, make_image

pytestmark = pytest.mark.vm

REPO = "lazy/app"
STARTUP = ("/bin/app", "/etc/config.toml", "/lib/libsmall.so")  # what the guest reads
BLOB_GET = re.compile(r'"GET /v2/[^ ]*/blobs/sha256:([0-9a-f]{64}) [^"]*" (\d+) (\d+)')


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return make_image(tmp_path_factory.mktemp("lazyimg"))


@pytest.fixture
def reg(tmp_path: Path, image: BuiltImage) -> Iterator[Registry]:
    (tmp_path / "registry").mkdir()
    with registry(tmp_path / "registry") as r:
        r.store(REPO, image.blob_id, image.blob_path.read_bytes())
        yield r


def config(path: Path, host: str, work_dir: Path, *, auth: str = "", validate: bool = False,
           prefetch: dict[str, object] | None = None) -> Path:
    backend: dict[str, object] = {"scheme": "http", "host": host, "repo": REPO, "timeout": 20}
    if auth:
        backend["auth"] = base64.b64encode(auth.encode()).decode()
    doc: dict[str, object] = {
        "device": {"backend": {"type": "registry", "config": backend},
                   "cache": {"type": "blobcache", "validate": validate,
                             "config": {"work_dir": str(work_dir)}}},
        "mode": "direct", "amplify_io": 0}
    if prefetch is not None:
        doc["fs_prefetch"] = {"enable": True, **prefetch}
    work_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def vhostfs_argv(sock: Path, image: BuiltImage, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "vhostfs", "virtiofs", "--sock", str(sock),
            "--bootstrap", str(image.bootstrap), "--config", str(cfg)]


def prefetching_argv(sock: Path, image: BuiltImage, cfg: Path, files: tuple[str, ...] = ()
                     ) -> list[str]:
    """The daemon starts the prefetch itself once the image is attached; it logs
    "prefetch finished" when done. `files` become nydusd's --prefetch-files list."""
    argv = vhostfs_argv(sock, image, cfg)
    if files:
        listing = cfg.with_suffix(".prefetch")
        listing.write_text("".join(f"{p}\n" for p in files))
        argv += ["--prefetch-files", str(listing)]
    return argv


def read_script(tag: str, paths: tuple[str, ...], mnt: str = "/mnt") -> str:
    lines = [f"mkdir -p {mnt}", f"mount -t virtiofs -o ro {tag} {mnt}"]
    for p in paths:
        lines.append(f"if sha256sum {mnt}{p} > /tmp/out 2>/tmp/err; then "
                     f"echo \"{tag} {p} $(cut -d' ' -f1 /tmp/out)\"; else "
                     f"echo \"{tag} {p} ERROR $(cat /tmp/err)\"; fi")
    return "\n".join(lines) + "\n"


def parse_reads(output: str) -> dict[tuple[str, str], str]:
    """{(tag, path): sha256 or "ERROR <message>"} from read_script's output."""
    result = {}
    for line in output.splitlines():
        tag, path, rest = line.split(" ", 2)
        result[(tag, path)] = rest
    return result


def registry_blob_bytes(reg: Registry, blob: str, expect_at_least: int = 0) -> list[int]:
    """Body sizes of the registry's blob GETs (bounded wait for lines still in the pipe)."""
    def sizes() -> list[int]:
        return [int(m.group(3)) for line in reg.log.matching(BLOB_GET.pattern)
                if (m := BLOB_GET.search(line)) and m.group(1) == blob and m.group(2) == "206"]
    deadline = time.monotonic() + 5
    while sum(sizes()) < expect_at_least and time.monotonic() < deadline:
        with reg.log.cond:
            reg.log.cond.wait(0.1)
    return sizes()


def stored_size(image: BuiltImage, *paths: str) -> int:
    return sum(e - s for s, e in image.ranges(*paths))


def socket(socket_dir: Path, name: str) -> Path:
    return socket_dir / f"{name}.sock"


def test_cold_read_fetches_only_touched_chunks_then_warm_boot_fetches_nothing(
        guest_image: object, image: BuiltImage, reg: Registry, tmp_path: Path,
        socket_dir: Path) -> None:
    work = tmp_path / "cache"
    cfg = config(tmp_path / "cfg.json", reg.host, work)
    requests_after = []
    for boot in (1, 2):
        sock, log = socket(socket_dir, f"lazy{boot}"), tmp_path / f"daemon{boot}.log"
        with vm.start_daemon(vhostfs_argv(sock, image, cfg), sock, log_path=log) as daemon:
            dev = vm.VirtioFsDevice(sock, "lazy", log_path=log)
            out = vm.run_guest(read_script("lazy", STARTUP), fs_devices=[dev],
                               timeout=120).check()
            daemon.stop()
        assert "Traceback" not in log.read_text()
        reads = parse_reads(out.text)
        assert reads == {("lazy", p): image.sha256(p) for p in STARTUP}
        wanted = stored_size(image, *STARTUP)
        fetched = registry_blob_bytes(reg, image.blob_id, wanted)
        # only the touched chunks' ranges crossed the wire, once, on the first boot only
        assert sum(fetched) == wanted
        assert wanted < image.blob_size / 3
        assert chunk_map_bits(work, image.blob_id) == sum(len(image.chunks(p)) for p in STARTUP)
        requests_after.append(len(reg.log.matching(r'"(GET|HEAD) /v2/[^ ]*/blobs/')))
    assert requests_after[0] > 0
    assert requests_after[1] == requests_after[0]  # the warm boot asked the registry nothing


def test_htpasswd_and_bearer_token_registries(guest_image: object, image: BuiltImage,
                                              tmp_path: Path, socket_dir: Path) -> None:
    """One guest, two shares: Basic auth (htpasswd) and the token flow (realm + JWT)."""
    blob = image.blob_path.read_bytes()
    with ExitStack() as stack:
        (tmp_path / "basic").mkdir()
        basic = stack.enter_context(registry(tmp_path / "basic", auth="htpasswd"))
        basic.store(REPO, image.blob_id, blob)
        issuer = TokenIssuer(tmp_path, "bob", "hunter2")
        realm = stack.enter_context(issuer.serve())
        (tmp_path / "token").mkdir()
        token = stack.enter_context(registry(tmp_path / "token", auth="token",
                                             token_realm=realm, bundle=issuer.bundle))
        token.store(REPO, image.blob_id, blob)
        issuer.requests.clear()
        devices = []
        for name, host, auth in (("basic", basic.host, "alice:s3cret"),
                                 ("token", token.host, "bob:hunter2")):
            cfg = config(tmp_path / f"{name}.json", host, tmp_path / f"{name}-cache", auth=auth)
            sock, log = socket(socket_dir, name), tmp_path / f"{name}.log"
            stack.enter_context(vm.start_daemon(vhostfs_argv(sock, image, cfg), sock,
                                                log_path=log))
            devices.append(vm.VirtioFsDevice(sock, name, log_path=log))
        script = read_script("basic", STARTUP, "/m1") + read_script("token", STARTUP, "/m2")
        reads = parse_reads(vm.run_guest(script, fs_devices=devices, timeout=120).check().text)
    assert reads == {(tag, p): image.sha256(p) for tag in ("basic", "token") for p in STARTUP}
    # the daemon went through the token server (pull scope), and cached the token
    assert [q["scope"] for q in issuer.requests] == [[f"repository:{REPO}:pull"]]
    assert registry_blob_bytes(basic, image.blob_id, 1) and registry_blob_bytes(token,
                                                                                image.blob_id, 1)


def test_transient_500s_and_corrupt_bytes(guest_image: object, image: BuiltImage,
                                          reg: Registry, tmp_path: Path,
                                          socket_dir: Path) -> None:
    """Share "flaky": the first two blob GETs fail with 500 (retried, right bytes).
    Share "corrupt": every response covering one chunk of /bin/app has a flipped byte:
    that file reads EIO, the daemon log names blob and chunk, other files read fine."""
    victim = image.chunks("/bin/app")[2]
    flaky, corrupt = Faults(fail_first=2), Faults(corrupt_at=victim.compressed_offset + 7)
    with ExitStack() as stack:
        devices, logs = [], {}
        for name, faults in (("flaky", flaky), ("corrupt", corrupt)):
            host = stack.enter_context(fault_proxy(reg.host, faults))
            cfg = config(tmp_path / f"{name}.json", host, tmp_path / f"{name}-cache")
            sock, log = socket(socket_dir, name), tmp_path / f"{name}.log"
            stack.enter_context(vm.start_daemon(vhostfs_argv(sock, image, cfg), sock,
                                                log_path=log))
            devices.append(vm.VirtioFsDevice(sock, name, log_path=log))
            logs[name] = log
        script = read_script("flaky", STARTUP, "/m1") + read_script("corrupt", STARTUP, "/m2")
        reads = parse_reads(vm.run_guest(script, fs_devices=devices, timeout=180).check().text)
    for p in STARTUP:
        assert reads[("flaky", p)] == image.sha256(p)
    assert [s for s, _, _ in flaky.blob_gets[:2]] == [500, 500]
    assert reads[("corrupt", "/bin/app")].startswith("ERROR")
    assert "Input/output error" in reads[("corrupt", "/bin/app")]  # EIO
    for p in STARTUP[1:]:
        assert reads[("corrupt", p)] == image.sha256(p)
    assert corrupt.corrupted_responses() >= 2  # the first fetch and the one refetch
    text = logs["corrupt"].read_text()
    assert f"blob {image.blob_id} chunk {victim.chunk_index}" in text


def test_corrupted_cache_file_is_validated_and_refetched(
        guest_image: object, image: BuiltImage, reg: Registry, tmp_path: Path,
        socket_dir: Path) -> None:
    work = tmp_path / "cache"
    # Fill the cache for the startup files (a prefetching daemon, no guest needed).
    cfg = config(tmp_path / "fill.json", reg.host, work, prefetch={"prefetch_all": False})
    sock, log = socket(socket_dir, "fill"), tmp_path / "fill.log"
    argv = prefetching_argv(sock, image, cfg, STARTUP)
    with vm.start_daemon(argv, sock, log_path=log) as daemon:
        poll_until(lambda: "prefetch finished" in log.read_text(), daemon.proc, log)
    before = sum(registry_blob_bytes(reg, image.blob_id, stored_size(image, *STARTUP)))
    assert before == stored_size(image, *STARTUP)
    # Damage one cached chunk of each of two files in the data file (bitmap still says ok).
    data_file = work / f"{image.blob_id}.blob.data"
    damaged = [image.chunks("/bin/app")[0], image.chunks("/lib/libsmall.so")[0]]
    with data_file.open("r+b") as f:
        for c in damaged:
            f.seek(c.uncompressed_offset + 5)
            f.write(b"\xde\xad\xbe\xef")
    cfg = config(tmp_path / "cfg.json", reg.host, work, validate=True)
    sock, log = socket(socket_dir, "valid"), tmp_path / "valid.log"
    with vm.start_daemon(vhostfs_argv(sock, image, cfg), sock, log_path=log):
        dev = vm.VirtioFsDevice(sock, "valid", log_path=log)
        out = vm.run_guest(read_script("valid", STARTUP), fs_devices=[dev], timeout=120).check()
    assert parse_reads(out.text) == {("valid", p): image.sha256(p) for p in STARTUP}
    refetched = sum(registry_blob_bytes(reg, image.blob_id, before + 1)) - before
    assert refetched == sum(c.compressed_size for c in damaged)  # just the damaged chunks


def test_sigkill_mid_prefetch_then_restart_recovers(
        guest_image: object, image: BuiltImage, reg: Registry, tmp_path: Path,
        socket_dir: Path) -> None:
    work = tmp_path / "cache"
    total_chunks = len({c.chunk_index for p in image.files for c in image.chunks(p)})
    # Whole-image prefetch paced at 512 KiB/s (one 64 KiB chunk per request): ~8 s in all.
    cfg = config(tmp_path / "slow.json", reg.host, work,
                 prefetch={"prefetch_all": True, "threads_count": 2, "merging_size": 65536,
                           "bandwidth_rate": 512 << 10})
    sock, log = socket(socket_dir, "slow"), tmp_path / "slow.log"
    with vm.start_daemon(prefetching_argv(sock, image, cfg), sock, log_path=log) as daemon:
        bitmap = work / f"{image.blob_id}.blob.data.chunk_map"
        poll_until(lambda: bitmap.exists() and chunk_map_bits(work, image.blob_id) >= 8,
                   daemon.proc, log)
        daemon.proc.send_signal(signal.SIGKILL)
        assert daemon.proc.wait(timeout=10) == -signal.SIGKILL
    cached = chunk_map_bits(work, image.blob_id)
    assert 8 <= cached < total_chunks  # killed mid-prefetch
    assert "prefetch finished" not in log.read_text()
    fetched_before = sum(registry_blob_bytes(reg, image.blob_id))
    sock, log = socket(socket_dir, "again"), tmp_path / "again.log"
    paths = tuple(image.files)
    with vm.start_daemon(vhostfs_argv(sock, image, cfg), sock, log_path=log):
        dev = vm.VirtioFsDevice(sock, "again", log_path=log)
        out = vm.run_guest(read_script("again", paths), fs_devices=[dev], timeout=180).check()
    assert parse_reads(out.text) == {("again", p): image.sha256(p) for p in paths}
    assert chunk_map_bits(work, image.blob_id) == total_chunks
    fetched_after = sum(registry_blob_bytes(reg, image.blob_id)) - fetched_before
    # what was cached before the kill was not fetched again
    assert fetched_after <= image.blob_size - cached * 60000


def poll_until(condition: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path,
               timeout: float = 60) -> None:
    """Bounded poll (the daemon is another process: no event to wait on), paced by waiting
    on the daemon itself so that its death ends the wait at once."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in {timeout}s:\n" \
            + log.read_text()
        try:
            status = proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"daemon exited with {status}:\n{log.read_text()}")
