"""`rafs build`: run the builder on a directory or on OCI layer tars, with progress."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Final

from ..algorithms import Compressor, Digester
from ..builder import BuildOptions, BuildResult, build_from_directory, build_from_layers
from ..builder.errors import BuildError

PROGRESS_EVERY: Final = 2.0  # seconds between progress lines on stderr


class _Progress:
    """Prints "chunked X of Y MiB" at most every PROGRESS_EVERY seconds (never sleeps)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        print(f"rafs build: {done >> 20} of {total >> 20} MiB chunked", file=sys.stderr)


def run_build(args: argparse.Namespace, compressor: Compressor, digester: Digester) -> int:
    options = BuildOptions(version=args.version, chunk_size=args.chunk_size,
                           compressor=compressor, digester=digester,
                           extended_inodes=args.extended_inodes, chunk_dict=args.chunk_dict)
    bootstrap = args.bootstrap or args.output / "bootstrap"
    blob_dir = args.output / "blobs"
    progress = _Progress(args.quiet)
    sources = args.sources
    if len(sources) == 1 and sources[0].is_dir():
        result = build_from_directory(sources[0], bootstrap, blob_dir, options, progress)
    elif any(s.is_dir() for s in sources):
        raise BuildError("give either one directory or layer tar files")
    else:
        result = build_from_layers(sources, bootstrap, blob_dir, options, progress)
    _summary(result)
    return 0


def _summary(result: BuildResult) -> None:
    print(f"bootstrap {result.bootstrap}")
    for blob in result.blobs:
        tag = "new" if result.new_blob is not None and blob.blob_id == result.new_blob.blob_id \
            else "dict"
        print(f"blob {blob.index} {blob.blob_id} ({tag}, {blob.chunk_count} chunks, "
              f"{blob.compressed_size} bytes)")
    print(f"{result.entries} entries, {result.bytes_read} bytes of file data", file=sys.stderr)
