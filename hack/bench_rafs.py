"""hack/bench_rafs: the RAFS builder against raw compression, and the reader on 100,000 files.

    hack/bench_rafs [--size MIB] [--rounds N] [--files N] [--json PATH] [--keep]

Build: a generated corpus (``--size`` MiB, default 64: a third pseudo-text, a third skewed
binary, a third random bytes) in two halves, eight large multi-chunk files and ~2000 small
files (1 B .. 32 KiB), each half built on its own with ``build_from_directory`` for each
compressor (v6, 1 MiB chunks, blake3).  The same bytes, cut into the same chunks and held in
memory, are compressed in-process with the same library calls the builder makes (zstd level 3
through one reused context, lz4 block), digested with blake3, and both.  ``builder /
compress`` is the builder's throughput as a fraction of the bare compressor's: what the rest
of the pipeline (walking and reading files, dedup, blob, ToC and bootstrap writing) costs.
Input is in the page cache; every job runs ``--rounds`` times, interleaved, best time kept.

Reader: an image of ``--files`` regular files (100 directories, default 100,000 files of a
few bytes) is built in memory for v6 and v5; a fresh interpreter then opens it and times
``Image`` and ``RafsFilesystem`` (the daemon's filesystem, blobs read through the localfs
backend) per operation over 20,000 random names: lookup (hit and miss), stat, readdir per
entry, open, and a small read (best of 3 passes).  "cold" is the first pass over a freshly
opened image; "warm" repeats it (the reader's inode caches hold 16,384 entries, so a random
fifth of 100,000 files still misses some).  Memory: the RSS growth of the process after
opening (the bootstrap is mmapped; touched pages count) and after walking every directory,
and the tracemalloc peak of opening and of that walk (Python objects only).

Timings are never asserted; the machine is shared, so read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Final

import lz4.block  # type: ignore[import-untyped]
import trio
import zstandard

from backends.config import LocalFsConfig
from backends.localfs import LocalFsBackend
from rafs import Image, open_image
from rafs.algorithms import Compressor, Digester, digest
from rafs.builder import (
    BuildOptions,
    BytesContent,
    FileNode,
    build_from_directory,
    build_image,
    new_directory,
)
from rafs.builder.compression import ZSTD_LEVEL
from vhostfs.fs.chunks import DirectChunks
from vhostfs.fs.rafsfs import RafsFilesystem
from vhostfs.fuse.filesystem import ROOT_INO, Context, FileHandle, Ino

MIB: Final = 1 << 20
CHUNK: Final = 1 << 20  # the builder's default chunk size
COMPRESSORS: Final = (Compressor.NONE, Compressor.LZ4_BLOCK, Compressor.ZSTD)
BIG_FILES: Final = 8
SMALL_FILE: Final = 16 << 10  # average size of the small files
DIRS: Final = 100
SAMPLE: Final = 20_000  # operations timed per kind (spread over the whole image)
REPEATS: Final = 3  # reader timings: best of this many passes
CTX: Final = Context(0, 0, 0)
WORDS: Final = [f"w{i:x}{'abcdefgh'[i % 8] * (i % 7)}" for i in range(600)]


# ---- the corpus ------------------------------------------------------------------------------


def content(kind: int, size: int, rng: random.Random) -> bytes:
    """Pseudo-text (~2x compressible), skewed binary (~2x) or random bytes (incompressible)."""
    if kind == 0:
        text = " ".join(rng.choices(WORDS, k=size // 4 + 1)).encode()
        return text[:size]
    if kind == 1:
        # mostly small values and zeros, like code and tables; built per 4 KiB for speed
        page = bytes(rng.choices(range(256), weights=[40] + [4] * 15 + [1] * 240, k=4096))
        pages = [bytes(b ^ rng.randrange(16) for b in page[:64]) + page[64:]
                 for _ in range(size // 4096 + 1)]
        return b"".join(pages)[:size]
    return rng.randbytes(size)


def make_corpus(root: Path, size: int) -> int:
    """Write the corpus under ``root``; returns its byte count."""
    rng = random.Random(0xB17D)
    (root / "big").mkdir(parents=True)
    total = 0
    for i in range(BIG_FILES):
        data = content(i % 3, size // 2 // BIG_FILES + 12345 * i, rng)
        (root / "big" / f"file-{i}").write_bytes(data)
        total += len(data)
    small = root / "small"
    for i in range(size // 2 // SMALL_FILE):
        directory = small / f"d{i % 16:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        data = content(i % 3, rng.randrange(1, 2 * SMALL_FILE), rng)
        (directory / f"f{i:05d}").write_bytes(data)
        total += len(data)
    return total


def corpus_chunks(root: Path) -> list[bytes]:
    """The corpus cut as the builder cuts it: each file into CHUNK-sized pieces."""
    chunks = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        chunks += [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
    return chunks


# ---- build throughput -------------------------------------------------------------------------


@dataclasses.dataclass
class BuildRow:
    corpus: str  # "large files" or "small files"
    compressor: str
    input_mb: float
    stored_mb: float  # blob size
    builder_mbps: float
    compress_mbps: float | None  # bare compressor on the same chunks
    digest_mbps: float
    compress_digest_mbps: float | None


def raw_compressor(compressor: Compressor) -> Callable[[bytes], bytes] | None:
    if compressor is Compressor.ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress
    if compressor is Compressor.LZ4_BLOCK:
        return lambda data: lz4.block.compress(data, store_size=False)
    return None


def compress_all(func: Callable[[bytes], bytes], chunks: list[bytes], with_digest: bool) -> None:
    for c in chunks:
        if with_digest:
            digest(Digester.BLAKE3, c)
        func(c)


def best_seconds(jobs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Fastest time of each job over ``rounds``; jobs alternate so load drift hits all alike."""
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_corpus(name: str, source: Path, work: Path, rounds: int) -> list[BuildRow]:
    chunks = corpus_chunks(source)
    mb = sum(map(len, chunks)) / 1e6
    jobs: dict[str, Callable[[], object]] = {
        "blake3": lambda: [digest(Digester.BLAKE3, c) for c in chunks]}
    for compressor in COMPRESSORS:
        out = work / f"build-{compressor.name}"

        def build(out: Path = out, compressor: Compressor = compressor) -> None:
            shutil.rmtree(out, ignore_errors=True)
            build_from_directory(source, out / "bootstrap", out / "blobs",
                                 BuildOptions(version=6, compressor=compressor))

        jobs[f"build {compressor.name}"] = build
        func = raw_compressor(compressor)
        if func is not None:
            jobs[compressor.name] = functools.partial(compress_all, func, chunks, False)
            jobs[f"{compressor.name}+blake3"] = functools.partial(compress_all, func, chunks, True)
    best = best_seconds(jobs, rounds)

    def mbps(job: str) -> float | None:
        return mb / best[job] if job in best else None

    rows = []
    for compressor in COMPRESSORS:
        blobs = work / f"build-{compressor.name}" / "blobs"
        stored = sum(p.stat().st_size for p in blobs.iterdir()) / 1e6
        rows.append(BuildRow(name, compressor.name.lower(), mb, stored,
                             mb / best[f"build {compressor.name}"], mbps(compressor.name),
                             mb / best["blake3"], mbps(f"{compressor.name}+blake3")))
    return rows


def bench_build(work: Path, size: int, rounds: int) -> list[BuildRow]:
    make_corpus(work / "corpus", size)
    return [*bench_corpus("large files", work / "corpus" / "big", work, rounds),
            *bench_corpus("small files", work / "corpus" / "small", work, rounds)]


# ---- the 100,000-file image --------------------------------------------------------------------


def many_files_tree(files: int) -> FileNode:
    root = new_directory()
    assert root.children is not None
    per_dir = -(-files // DIRS)
    for d in range(DIRS):
        directory = root.children[b"dir-%03d" % d] = new_directory()
        assert directory.children is not None
        for f in range(min(per_dir, files - d * per_dir)):
            directory.children[b"file-%05d.conf" % f] = FileNode(
                mode=stat.S_IFREG | 0o644, content=BytesContent(b"dir %d file %d\n" % (d, f)))
    return root


def build_many(work: Path, files: int, version: int) -> tuple[Path, float]:
    out = work / f"many-v{version}"
    start = time.perf_counter()
    build_image(many_files_tree(files), out / "bootstrap", out / "blobs",
                BuildOptions(version=version, compressor=Compressor.ZSTD))
    return out, time.perf_counter() - start


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def walk(image: Image) -> int:
    """stat every inode reachable from the root; returns the count."""
    stack, count = [image.root_ino], 0
    while stack:
        for _, name, inode in image.readdir(stack.pop()):
            if name in (b".", b".."):
                continue
            count += 1
            if inode.is_dir:
                stack.append(inode.ino)
    return count


def per_op_us(func: Callable[[], int]) -> float:
    """Microseconds per operation of ``func`` (it returns its operation count), best of runs."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        ops = func()
        best = min(best, (time.perf_counter() - start) / ops)
    return best * 1e6


def measure_reader(image_dir: Path) -> dict[str, float]:
    """Run in a fresh interpreter (``--reader``): per-op costs and memory of one image."""
    bootstrap = image_dir / "bootstrap"
    result: dict[str, float] = {"bootstrap_mib": bootstrap.stat().st_size / MIB}
    rss0 = rss_kib()
    start = time.perf_counter()
    image = open_image(bootstrap)
    result["open_ms"] = (time.perf_counter() - start) * 1e3
    result["rss_open_mib"] = (rss_kib() - rss0) / 1024
    result["walk_entries"] = walk(image)
    result["rss_walked_mib"] = (rss_kib() - rss0) / 1024
    dirs = [inode.ino for _, name, inode in image.readdir(image.root_ino)
            if name not in (b".", b"..")]
    rng = random.Random(7)
    names = {ino: [n for _, n, _ in image.readdir(ino) if n not in (b".", b"..")]
             for ino in dirs}
    sample: list[tuple[int, bytes]] = [(ino, rng.choice(names[ino]))
                                       for ino in rng.choices(dirs, k=SAMPLE)]
    inos = [image.lookup(p, n).ino for p, n in sample]  # type: ignore[union-attr]

    def lookups(img: Image = image, suffix: bytes = b"") -> int:
        for parent, name in sample:
            img.lookup(parent, name + suffix)
        return len(sample)

    def stats() -> int:
        for ino in inos:
            image.inode(ino)
        return len(inos)

    def readdirs() -> int:
        return sum(sum(1 for _ in image.readdir(ino)) for ino in dirs)

    # cold: the first pass over a freshly opened image (nothing decoded or cached yet)
    result["image_lookup_cold_us"] = per_op_us(lambda: lookups(open_image(bootstrap)))
    result["image_lookup_us"] = per_op_us(lookups)
    result["image_lookup_miss_us"] = per_op_us(lambda: lookups(suffix=b".missing"))
    result["image_stat_us"] = per_op_us(stats)
    result["image_readdir_entry_us"] = per_op_us(readdirs)
    result.update(trio.run(measure_fs, image, image_dir / "blobs", sample))
    tracemalloc.start()
    second = open_image(bootstrap)
    result["tracemalloc_open_mib"] = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.reset_peak()
    walk(second)
    result["tracemalloc_walk_mib"] = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.stop()
    return result


async def measure_fs(image: Image, blob_dir: Path,
                     sample: list[tuple[int, bytes]]) -> dict[str, float]:
    """Per-op costs through RafsFilesystem (what the FUSE server awaits per request)."""
    limiter = trio.CapacityLimiter(4)
    chunks = DirectChunks(LocalFsBackend(LocalFsConfig(dir=str(blob_dir)), limiter), limiter)
    fs = RafsFilesystem(image, chunks)
    root = int(image.root_ino)
    # FUSE node ids: the image root is 1 (RafsFilesystem swaps it with image inode 1)
    fuse_sample = [(Ino(ROOT_INO if p == root else p), n) for p, n in sample]
    entries = [await fs.lookup(CTX, p, name) for p, name in fuse_sample]
    dirs = [Ino(e.ino) for _, name, e in image.readdir(root)
            if e.is_dir and name not in (b".", b"..")]
    views = [memoryview(bytearray(4096))]
    out: dict[str, float] = {}

    async def timed(key: str, ops: Callable[[], Iterator[Awaitable[object]]]) -> None:
        best = float("inf")
        for _ in range(REPEATS):
            count, start = 0, time.perf_counter()
            for op in ops():
                await op
                count += 1
            best = min(best, (time.perf_counter() - start) / count)
        out[key] = best * 1e6

    async def listing(d: Ino) -> None:
        for _ in await fs.readdir(CTX, d, FileHandle(0), 0):
            pass

    await timed("fs_lookup_us", lambda: (fs.lookup(CTX, p, name) for p, name in fuse_sample))
    await timed("fs_getattr_us", lambda: (fs.getattr(CTX, e.ino, None) for e in entries))
    await timed("fs_open_us", lambda: (fs.open(CTX, e.ino, os.O_RDONLY) for e in entries))
    await timed("fs_readdir_dir_us", lambda: (listing(d) for d in dirs))
    out["fs_readdir_entry_us"] = out.pop("fs_readdir_dir_us") * len(dirs) / (
        sum(1 for d in dirs for _ in image.readdir(d)))
    await timed("fs_read_small_us",
                lambda: (fs.read(CTX, e.ino, FileHandle(0), 0, views) for e in entries[:2000]))
    await chunks.aclose()
    return out


def bench_reader(work: Path, files: int) -> dict[str, dict[str, float]]:
    results = {}
    for version in (6, 5):
        image_dir, seconds = build_many(work, files, version)
        child = subprocess.run([sys.executable, "-m", "hack.bench_rafs", "--reader",
                                str(image_dir)], capture_output=True, text=True)
        if child.returncode != 0:
            raise RuntimeError(f"reader measurement failed:\n{child.stderr}")
        measured = json.loads(child.stdout)
        measured["build_s"] = seconds
        measured["files"] = files
        results[f"v{version}"] = measured
    return results


# ---- report ------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_build(rows: list[BuildRow], rounds: int) -> None:
    print(f"\nBuild throughput (v6, 1 MiB chunks, blake3; MB/s of input, best of {rounds}):\n")
    print("| input | compressor | blob MB | builder MB/s | compress MB/s | blake3 MB/s "
          "| compress+blake3 MB/s | builder / compress | builder / (compress+blake3) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = r.compress_mbps
        both = r.compress_digest_mbps if r.compress_digest_mbps is not None else r.digest_mbps
        ratio = f"{r.builder_mbps / base:.2f}" if base else "-"
        print(f"| {r.input_mb:.0f} MB of {r.corpus} | {r.compressor} | {r.stored_mb:.1f} "
              f"| {r.builder_mbps:.0f} | {fmt(base, 0)} | {r.digest_mbps:.0f} "
              f"| {fmt(r.compress_digest_mbps, 0)} | {ratio} | {r.builder_mbps / both:.2f} |")


READER_ROWS: Final = [
    ("build the image (s)", "build_s", 1),
    ("bootstrap size (MiB)", "bootstrap_mib", 1),
    ("open_image (ms)", "open_ms", 2),
    ("Image.lookup, cold (µs)", "image_lookup_cold_us", 1),
    ("Image.lookup, warm (µs)", "image_lookup_us", 1),
    ("Image.lookup miss (µs)", "image_lookup_miss_us", 1),
    ("Image.inode / stat (µs)", "image_stat_us", 1),
    ("Image.readdir, per entry (µs)", "image_readdir_entry_us", 2),
    ("RafsFilesystem.lookup (µs)", "fs_lookup_us", 1),
    ("RafsFilesystem.getattr (µs)", "fs_getattr_us", 1),
    ("RafsFilesystem.readdir, per entry (µs)", "fs_readdir_entry_us", 2),
    ("RafsFilesystem.open (µs)", "fs_open_us", 1),
    ("RafsFilesystem.read of a small file (µs)", "fs_read_small_us", 0),
    ("RSS growth after open_image (MiB)", "rss_open_mib", 1),
    ("RSS growth after open_image + a full walk (MiB)", "rss_walked_mib", 1),
    ("tracemalloc peak, open_image (MiB)", "tracemalloc_open_mib", 2),
    ("tracemalloc peak, full walk (MiB)", "tracemalloc_walk_mib", 2),
]


def print_reader(results: dict[str, dict[str, float]]) -> None:
    files = int(results["v6"]["files"])
    print(f"\nReader on an image of {files:,} files in {DIRS} directories "
          f"({SAMPLE:,} random operations each):\n")
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for label, key, digits in READER_ROWS:
        print(f"| {label} | " + " | ".join(fmt(r[key], digits) for r in results.values()) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(prog="hack/bench_rafs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="corpus size in MiB (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="build rounds (best of)")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--reader", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.reader is not None:
        print(json.dumps(measure_reader(args.reader)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-rafs-"))
    try:
        rows = bench_build(work, args.size * MIB, args.rounds)
        print_build(rows, args.rounds)
        reader = bench_reader(work, args.files)
        print_reader(reader)
        print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
              f"Python {sys.version.split()[0]}")
        if args.json:
            args.json.write_text(json.dumps(
                {"build": [dataclasses.asdict(r) for r in rows], "reader": reader}, indent=2))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
