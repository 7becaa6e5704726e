"""Small RAFS images for lazy-loading tests: a source tree, built with our builder, plus the
facts tests compare against (file digests, each file's chunks and stored ranges).

The content is random (incompressible), so zstd stores chunks as they are and the stored
ranges of different files do not overlap or dedupe: "which files were read" can be told from
"which blob ranges were fetched".
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import rafs

CHUNK_SIZE: Final = 64 << 10  # bytes
# path inside the image -> size in bytes: a few MiB over a few directories
DEFAULT_FILES: Final = {
    "/bin/app": 700_000,
    "/lib/libbig.so": 1_500_000,
    "/lib/libsmall.so": 90_000,
    "/etc/config.toml": 3_000,
    "/share/data/blob1.bin": 1_200_000,
    "/share/data/blob2.bin": 800_000,
    "/share/doc/README": 12_345,
}


@dataclass(frozen=True)
class BuiltImage:
    source: Path  # the tree the image was built from
    bootstrap: Path
    blob_path: Path
    blob_id: str
    files: dict[str, bytes]  # path inside the image -> content

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def chunks(self, path: str) -> list[rafs.ChunkRef]:
        """The stored chunks of `path` (holes excluded)."""
        image = rafs.open_image(self.bootstrap)
        inode = lookup(image, path)
        return [c for c in image.file_chunks(inode.ino, 0, inode.size) if not c.is_hole]

    def ranges(self, *paths: str) -> set[tuple[int, int]]:
        """(compressed_offset, compressed_end) of every chunk of `paths`."""
        return {(c.compressed_offset, c.compressed_offset + c.compressed_size)
                for p in paths for c in self.chunks(p)}

    @property
    def blob_size(self) -> int:
        return self.blob_path.stat().st_size


def lookup(image: rafs.Image, path: str) -> rafs.Inode:
    inode = image.inode(image.root_ino)
    for part in path.strip("/").split("/"):
        found = image.lookup(inode.ino, part.encode())
        assert found is not None, f"{path} not in the image"
        inode = found
    return inode


def write_tree(root: Path, sizes: dict[str, int], seed: int = 1) -> dict[str, bytes]:
    """Random files of the given sizes under `root`; returns their contents."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for path, size in sizes.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        target.write_bytes(data)
        files[path] = data
    return files


def build(source: Path, out: Path, *, chunk_size: int = CHUNK_SIZE,
          compressor: str = "zstd") -> tuple[Path, Path, str]:
    """`python -m rafs build` (our builder, as users run it); (bootstrap, blob, blob id)."""
    subprocess.run([sys.executable, "-m", "rafs", "build", str(source), "-o", str(out),
                    "--compressor", compressor, "--chunk-size", hex(chunk_size), "-q"],
                   check=True, capture_output=True)
    image = rafs.open_image(out / "bootstrap")
    assert len(image.blobs) == 1
    blob_id = image.blobs[0].blob_id
    return out / "bootstrap", out / "blobs" / blob_id, blob_id


def make_image(workdir: Path, sizes: dict[str, int] | None = None, **options: int | str
               ) -> BuiltImage:
    source = workdir / "src"
    files = write_tree(source, dict(DEFAULT_FILES if sizes is None else sizes))
    bootstrap, blob_path, blob_id = build(source, workdir / "image", **options)  # type: ignore[arg-type]
    return BuiltImage(source, bootstrap, blob_path, blob_id, files)


def touched_fraction(fetched: set[tuple[int, int]], blob_size: int) -> float:
    return sum(end - start for start, end in fetched) / blob_size if blob_size else 0.0


def chunk_map_bits(work_dir: Path, blob_id: str) -> int:
    """Set bits in the blob's persistent chunk map (nydusd-interface §5): chunks cached."""
    data = (work_dir / f"{blob_id}.blob.data.chunk_map").read_bytes()
    return sum(bin(b).count("1") for b in data[4096:])


def env_without_proxy() -> dict[str, str]:
    """The environment minus HTTP proxy variables (loopback servers must be reached directly)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
