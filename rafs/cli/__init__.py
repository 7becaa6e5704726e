"""The `rafs` command line: build, inspect, check and unpack RAFS images.

    rafs build SRC... -o OUT [--version 6] [--chunk-size 1M] [--compressor zstd] ...
    rafs inspect BOOTSTRAP {tree | stat PATH | chunks PATH | blobs}
    rafs check BOOTSTRAP --blob-dir DIR
    rafs unpack BOOTSTRAP --blob-dir DIR (--to-dir DIR | --to-tar FILE)

`build` writes OUT/bootstrap and OUT/blobs/<blob id> (see `rafs.builder`). The other
commands read through the public reader API. Errors print one line and exit 1; a failed
check exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from ..algorithms import Compressor, Digester
from ..errors import RafsError
from ..image import open_image
from .blobs import BlobFiles

COMPRESSORS: Final = {"none": Compressor.NONE, "lz4_block": Compressor.LZ4_BLOCK,
                      "zstd": Compressor.ZSTD}
DIGESTERS: Final = {"blake3": Digester.BLAKE3, "sha256": Digester.SHA256}
_UNITS: Final = {"k": 1 << 10, "m": 1 << 20}


def parse_size(text: str) -> int:
    """'1M', '512K', '0x100000' or '1048576' -> bytes."""
    unit = _UNITS.get(text[-1:].lower(), 1)
    number = text[:-1] if unit > 1 else text
    try:
        return int(number, 0) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rafs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="directory or OCI layer tars -> bootstrap + blob")
    build.add_argument("sources", nargs="+", type=Path,
                       help="one directory, or layer tars (tar, tar.gz, tar.zst) in order")
    build.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    build.add_argument("--bootstrap", type=Path, help="bootstrap path (default OUT/bootstrap)")
    build.add_argument("--version", type=int, choices=(5, 6), default=6)
    build.add_argument("--chunk-size", type=parse_size, default=1 << 20)
    build.add_argument("--compressor", choices=sorted(COMPRESSORS), default="zstd")
    build.add_argument("--digester", choices=sorted(DIGESTERS), default="blake3")
    build.add_argument("--chunk-dict", type=Path, help="bootstrap whose chunks to reuse")
    build.add_argument("--extended-inodes", action="store_true",
                       help="v6: 64-byte inodes everywhere (keeps mtimes)")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    inspect = sub.add_parser("inspect", help="show the tree, an inode, chunks or blobs")
    inspect.add_argument("bootstrap", type=Path)
    inspect.add_argument("what", choices=("tree", "stat", "chunks", "blobs"))
    inspect.add_argument("path", nargs="?", default="/")
    for name, text in (("check", "verify every digest"), ("unpack", "extract the image")):
        command = sub.add_parser(name, help=text)
        command.add_argument("bootstrap", type=Path)
        command.add_argument("--blob-dir", type=Path,
                             help="directory of blob files (default: BOOTSTRAP's dir/blobs)")
    unpack = sub.choices["unpack"]
    target = unpack.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-dir", type=Path)
    target.add_argument("--to-tar", type=Path, help="tar file, or - for stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except RafsError as exc:
        print(f"rafs {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rafs {args.command}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "build":
        from .build import run_build

        return run_build(args, COMPRESSORS[args.compressor], DIGESTERS[args.digester])
    image = open_image(args.bootstrap)
    if args.command == "inspect":
        from .inspect import blob_lines, chunk_lines, stat_lines, tree_lines

        lines = {"tree": lambda: tree_lines(image), "blobs": lambda: blob_lines(image),
                 "stat": lambda: stat_lines(image, args.path),
                 "chunks": lambda: chunk_lines(image, args.path)}[args.what]()
        for line in lines:
            print(line)
        return 0
    blob_dir = args.blob_dir or args.bootstrap.parent / "blobs"
    with BlobFiles(image, blob_dir) as blobs:
        return _check(blobs) if args.command == "check" else _unpack(blobs, args)


def _check(blobs: BlobFiles) -> int:
    from .check import check_image

    report = check_image(blobs)
    for problem in report.problems:
        print(f"FAIL {problem}")
    print(f"{'OK' if report.ok else 'FAILED'}: {report.files} files, {report.chunks} chunks, "
          f"{report.blobs} blobs checked")
    return 0 if report.ok else 2


def _unpack(blobs: BlobFiles, args: argparse.Namespace) -> int:
    from .unpack import unpack_to_directory, unpack_to_tar

    if args.to_dir is not None:
        count = unpack_to_directory(blobs, args.to_dir)
    elif str(args.to_tar) == "-":
        count = unpack_to_tar(blobs, sys.stdout.buffer)
    else:
        with open(args.to_tar, "wb") as out:
            count = unpack_to_tar(blobs, out)
    print(f"unpacked {count} entries", file=sys.stderr)
    return 0
