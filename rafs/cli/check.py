"""`rafs check`: verify every digest an image and its blobs carry, using the reader.

Checked, in order: the v5 inode digest tree (v6 has none); every chunk every file
references, decoded and compared with its digest; then per blob its id (sha256 of the file
minus the digest array), its ToC (size, digest and every section's sha256), and its blob
meta and digest array (each referenced chunk's entry agrees with the bootstrap).
Problems are collected, not raised one by one, so a report names all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..blobinfo import BlobFeatures
from ..blobmeta import (
    TOC_ENTRY_DATA,
    BlobMeta,
    check_blob_id,
    check_data_section,
    check_toc,
    read_section,
)
from ..errors import FormatError, RafsError, Unsupported
from ..inode import ChunkRef
from ..v5.layout import CHUNK_COMPRESSED, ChunkRecord
from .blobs import BlobFiles
from .walk import walk


@dataclass(slots=True)
class CheckReport:
    """What was verified and what failed."""

    chunks: int = 0  # distinct chunks decoded and digest-checked
    files: int = 0  # regular files whose every chunk was checked
    blobs: int = 0  # blobs whose id, ToC and meta were checked
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_blob(blobs: BlobFiles, index: int, refs: dict[int, ChunkRef],
                report: CheckReport) -> None:
    info = blobs.image.blobs[index]
    data = blobs.blob(index)
    check_blob_id(data, info)
    if info.features & BlobFeatures.HAS_TOC:
        for entry in check_toc(data, info):
            if entry.section_name == TOC_ENTRY_DATA:
                check_data_section(data, entry)
            else:
                read_section(data, entry)
    if info.meta is not None:
        meta = BlobMeta.from_blob(data, info)
        for ci_index, ref in sorted(refs.items()):
            _compare(meta.chunk(ci_index), ref, info.features)
    report.blobs += 1


def _compare(record: ChunkRecord, ref: ChunkRef, features: BlobFeatures) -> None:
    """The blob meta's view of a chunk must match the bootstrap's."""
    ours = (record.compressed_offset, record.compressed_size, record.uncompressed_offset,
            record.uncompressed_size, bool(record.flags & CHUNK_COMPRESSED))
    theirs = (ref.compressed_offset, ref.compressed_size, ref.uncompressed_offset,
              ref.uncompressed_size, ref.is_compressed)
    if ours != theirs:
        raise FormatError(f"chunk {ref.chunk_index}: blob meta says {ours}, bootstrap {theirs}")
    has_digests = features & BlobFeatures.INLINED_CHUNK_DIGEST
    if has_digests and ref.digest is not None and record.digest != ref.digest:
        raise FormatError(f"chunk {ref.chunk_index}: digest array disagrees with bootstrap")


def check_image(blobs: BlobFiles) -> CheckReport:
    """Verify the image behind `blobs`; every failure becomes a line of the report."""
    report = CheckReport()
    image = blobs.image
    try:
        image.verify_inode_digests()
    except Unsupported:
        pass  # v6 images carry no inode digests
    except RafsError as exc:
        report.problems.append(f"inode digests: {exc}")
    refs: dict[int, dict[int, ChunkRef]] = {i: {} for i in range(len(image.blobs))}
    done: set[int] = set()
    for path, inode in walk(image):
        if not inode.is_reg or inode.ino in done:
            continue
        done.add(inode.ino)
        try:
            for ref in image.file_chunks(inode.ino, 0, inode.size):
                if ref.blob_index is not None:
                    refs.setdefault(ref.blob_index, {})[ref.chunk_index] = ref
            for _ in blobs.file_pieces(inode.ino, inode.size):
                pass
            report.files += 1
        except RafsError as exc:
            report.problems.append(f"{path.decode(errors='replace')}: {exc}")
    report.chunks = sum(len(r) for r in refs.values())
    for index in range(len(image.blobs)):
        try:
            _check_blob(blobs, index, refs.get(index, {}), report)
        except RafsError as exc:
            report.problems.append(f"blob {index} ({image.blobs[index].blob_id}): {exc}")
    return report
