"""A RAFS image as a FUSE filesystem: metadata from the bootstrap, data through a ChunkSource.

The image is immutable for as long as it is mounted, so everything the guest learns may be
cached for as long as the mount lives (as nydusd does, with entry and attribute timeouts of
2**32 seconds): entries, negative lookups, attributes, symlink targets and page-cache data.
The filesystem itself keeps no per-inode state: node ids are the image's own inode numbers,
so lookups and forgets cost nothing and no fd or object is held per inode the guest knows.

Node ids: FUSE requires the root to be 1, while RAFS v6 numbers inodes by their position in
the bootstrap (the root is often 128 or so). The image's root and image inode 1 swap numbers
(an involution), every other inode keeps its own.

Reads: the requested range becomes the chunk references that cover it (holes explicit), the
chunks of each blob are fetched and verified together, and the pieces are copied into the
guest's buffers. One copy is unavoidable: chunk data is compressed or lives in a cache file.

Verification: every stored chunk that reaches the guest is checked against a digest. v6
images may keep digests out of the bootstrap (in the blob's digest array, §5.3) or leave
chunks out of its chunk table (only in the blob meta, §5.2): such blobs get their blob meta
fetched and attached on first use; a chunk that still has no digest is refused (EIO).

Prefetch (`prefetch`, see rafsprefetch) runs in the daemon's nursery after attaching; it
fetches through the same cache, behind the guest's own reads.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence

import trio

from backends.errors import BackendError
from rafs import ChunkRef, Image, Inode, RafsError, Unsupported
from vhostfs.errors import FsError
from vhostfs.fs.chunks import ChunkSource, fetch_blob_meta
from vhostfs.fs.rafsprefetch import PrefetchPlan, prefetch_roots, regular_files, unique_inos
from vhostfs.fuse.filesystem import (
    ROOT_INO,
    Attr,
    Context,
    DirEntry,
    Entry,
    FileHandle,
    Filesystem,
    FsOptions,
    Ino,
    Opened,
    PlusListing,
    StatFs,
)

# Seconds the guest may cache what it learns: "forever" (nydusd uses 2**32 s too).
IMMUTABLE_TIMEOUT = float(2**32)
BLOCK_SIZE = 4096
NAME_MAX = 255
NO_HANDLE = FileHandle(0)
_WRITE_INTENT = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT | os.O_APPEND
_DOTS = (b".", b"..")
_WALK_BATCH = 64  # files resolved to chunks between checkpoints while planning a prefetch

log = logging.getLogger(__name__)


class RafsFilesystem(Filesystem):
    """Read-only view of one RAFS image (wrap nothing around it: it refuses writes itself)."""

    def __init__(self, image: Image, chunks: ChunkSource, *, enable_xattr: bool = True,
                 prefetch: PrefetchPlan = PrefetchPlan()) -> None:  # noqa: B008 - frozen
        self.image = image
        self.chunks = chunks
        self.enable_xattr = enable_xattr
        self.prefetch_plan = prefetch
        self._root = int(image.root_ino)
        self._meta_attached: set[int] = set()  # blob indexes resolved through their blob meta
        self._meta_lock = trio.Lock()
        self.prefetch_done = trio.Event()  # set when `prefetch` returns (also if disabled)

    # -- node ids ------------------------------------------------------------------------

    def _image_ino(self, ino: Ino) -> int:
        if ino == ROOT_INO:
            return self._root
        return ROOT_INO if ino == self._root else int(ino)

    def _fuse_ino(self, image_ino: int) -> Ino:
        if image_ino == self._root:
            return ROOT_INO
        return Ino(self._root) if image_ino == ROOT_INO else Ino(image_ino)

    def _inode(self, ino: Ino) -> Inode:
        return self.image.inode(self._image_ino(ino))

    def _attr(self, inode: Inode) -> Attr:
        return Attr(
            ino=self._fuse_ino(inode.ino),
            size=inode.size,
            blocks=inode.blocks,
            atime=inode.mtime,
            mtime=inode.mtime,
            ctime=inode.mtime,
            atime_ns=inode.mtime_nsec,
            mtime_ns=inode.mtime_nsec,
            ctime_ns=inode.mtime_nsec,
            mode=inode.mode,
            nlink=inode.nlink,
            uid=inode.uid,
            gid=inode.gid,
            rdev=inode.rdev,
            blksize=BLOCK_SIZE,
        )

    def _entry(self, inode: Inode) -> Entry:
        return Entry(
            self._fuse_ino(inode.ino), self._attr(inode), IMMUTABLE_TIMEOUT, IMMUTABLE_TIMEOUT
        )

    # -- metadata ------------------------------------------------------------------------

    async def init(self) -> FsOptions:
        return FsOptions(readdirplus=True, cache_symlinks=True, export_support=False)

    async def lookup(self, ctx: Context, parent: Ino, name: bytes) -> Entry:
        found = self.image.lookup(self._image_ino(parent), name)
        if found is None:
            # A negative entry: the name will never appear in an immutable image.
            zero = Attr(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
            return Entry(Ino(0), zero, IMMUTABLE_TIMEOUT, 0.0)
        return self._entry(found)

    async def getattr(self, ctx: Context, ino: Ino, fh: FileHandle | None) -> tuple[Attr, float]:
        return self._attr(self._inode(ino)), IMMUTABLE_TIMEOUT

    async def readlink(self, ctx: Context, ino: Ino) -> bytes:
        return self.image.readlink(self._image_ino(ino))

    async def getxattr(self, ctx: Context, ino: Ino, name: bytes) -> bytes:
        if not self.enable_xattr:
            raise FsError(errno.ENODATA)
        value = self.image.getxattr(self._image_ino(ino), name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    async def listxattr(self, ctx: Context, ino: Ino) -> list[bytes]:
        if not self.enable_xattr:
            return []
        return self.image.listxattr(self._image_ino(ino))

    async def access(self, ctx: Context, ino: Ino, mask: int) -> None:
        self._inode(ino)  # permissions are checked by the guest (default_permissions)

    async def statfs(self, ctx: Context, ino: Ino) -> StatFs:
        blocks = sum(b.uncompressed_size or 0 for b in self.image.blobs) // BLOCK_SIZE
        files = self.image.inode_count
        return StatFs(blocks, 0, 0, files, 0, BLOCK_SIZE, NAME_MAX, BLOCK_SIZE)

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        if not self._inode(ino).is_dir:
            raise FsError(errno.ENOTDIR)
        return Opened(NO_HANDLE, keep_cache=True, cache_dir=True)

    async def readdir(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int
    ) -> Iterator[DirEntry]:
        entries = self.image.readdir(self._image_ino(ino), offset)
        return (
            DirEntry(self._fuse_ino(child.ino), name, stat.S_IFMT(child.mode) >> 12, next_index)
            for next_index, name, child in entries
        )

    async def readdirplus(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, out: PlusListing
    ) -> bool:
        """The listing already holds each child's inode, so no entry is searched for by
        name again (on v5 a search decodes an inode per step of a binary search). Nodes
        are the image's inodes: nothing is counted, nothing needs taking back."""
        for next_index, name, child in self.image.readdir(self._image_ino(ino), offset):
            entry = DirEntry(self._fuse_ino(child.ino), name, stat.S_IFMT(child.mode) >> 12,
                             next_index)  # fmt: skip
            if not out.add(entry, None if name in _DOTS else self._entry(child)):
                break
        return True

    # -- files ---------------------------------------------------------------------------

    async def open(self, ctx: Context, ino: Ino, flags: int) -> Opened:
        inode = self._inode(ino)
        if flags & _WRITE_INTENT:
            raise FsError(errno.EROFS)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        return Opened(NO_HANDLE, keep_cache=True)

    async def read(
        self, ctx: Context, ino: Ino, fh: FileHandle, offset: int, bufs: Sequence[memoryview]
    ) -> int:
        inode = self._inode(ino)
        if not inode.is_reg:
            raise FsError(errno.EINVAL)
        size = min(sum(map(len, bufs)), max(inode.size - offset, 0))
        if size <= 0:
            return 0
        try:
            refs = await self._file_chunks(inode.ino, offset, size)
            content = await self._fetch(refs)
        except (BackendError, RafsError, FsError) as exc:
            # The FUSE server turns these into errno without logging: say here what failed.
            log.error("read of inode %d [%d, +%d) failed: %s", inode.ino, offset, size, exc)
            raise
        sink = _Sink(bufs)
        for ref in refs:
            start = max(offset, ref.file_offset)
            end = min(offset + size, ref.file_end)
            if end <= start:
                continue
            if ref.is_hole:
                sink.zeros(end - start)
            else:
                data = content[id(ref)]
                sink.put(memoryview(data)[start - ref.file_offset : end - ref.file_offset])
        return sink.filled

    async def _fetch(self, refs: list[ChunkRef]) -> dict[int, bytes]:
        """Verified content of every stored chunk in `refs`, keyed by id(ref)."""
        by_blob: dict[int, list[ChunkRef]] = {}
        for ref in refs:
            if ref.blob_index is not None:
                by_blob.setdefault(ref.blob_index, []).append(ref)
        content: dict[int, bytes] = {}
        for index, group in by_blob.items():
            blob = self.image.blobs[index]
            for ref, data in zip(group, await self.chunks.read_chunks(blob, group), strict=True):
                content[id(ref)] = data
        return content

    async def _file_chunks(self, ino: int, offset: int, size: int) -> list[ChunkRef]:
        """`Image.file_chunks`, with every stored chunk carrying a digest (see module doc)."""
        try:
            refs = self.image.file_chunks(ino, offset, size)
        except Unsupported:
            # Chunks missing from the bootstrap's chunk table: resolve through blob meta.
            if not await self._attach_meta(range(len(self.image.blobs))):
                raise
            refs = self.image.file_chunks(ino, offset, size)
        lacking = {r.blob_index for r in refs if r.blob_index is not None and r.digest is None}
        if lacking and await self._attach_meta(lacking):
            refs = self.image.file_chunks(ino, offset, size)
        for ref in refs:
            if ref.blob_index is not None and ref.digest is None:
                blob = self.image.blobs[ref.blob_index]
                raise FsError(errno.EIO, f"blob {blob.blob_id} chunk {ref.chunk_index}: no "
                              "digest in the bootstrap or the blob; refusing unverified data")
        return refs

    async def _attach_meta(self, indexes: Iterable[int]) -> bool:
        """Attach the blob meta of blobs in `indexes` not yet attached; True if any was."""
        attached = False
        async with self._meta_lock:
            for index in sorted(indexes):
                blob = self.image.blobs[index]
                if index in self._meta_attached or blob.meta is None:
                    continue
                meta = await fetch_blob_meta(self.chunks.backend, blob)
                self.image.attach_blob_meta(meta)
                self._meta_attached.add(index)
                attached = True
        return attached

    # -- prefetch and metrics ------------------------------------------------------------

    async def prefetch(self) -> None:
        """Run the configured prefetch to completion (nydusd-interface §4.6).

        Best effort: a file that cannot be planned or a failed backend request is logged and
        skipped; chunks that did arrive are cached. Guest reads go first (the Prefetcher
        waits while any is fetching). Cancellation stops it; cached chunks stay valid (a
        chunk's bit is set only after its bytes are durable), so a restart resumes.
        """
        try:
            roots, whole = prefetch_roots(self.image, self.prefetch_plan)
            started = time.monotonic()
            if roots:
                await self._prefetch_files(roots)
            if whole:
                await self._prefetch_files([self.image.inode(self.image.root_ino)])
            if roots or whole:
                log.info("prefetch finished in %.2f s", time.monotonic() - started)
        finally:
            self.prefetch_done.set()

    async def _prefetch_files(self, roots: list[Inode]) -> None:
        by_blob: dict[int, dict[int, ChunkRef]] = {}
        for n, ino in enumerate(unique_inos(regular_files(self.image, roots))):
            if n % _WALK_BATCH == 0:
                await trio.lowlevel.checkpoint()
            try:
                refs = await self._file_chunks(ino, 0, self.image.inode(ino).size)
            except (BackendError, RafsError, FsError) as exc:
                log.warning("prefetch: inode %d skipped: %s", ino, exc)
                continue
            for ref in refs:
                if ref.blob_index is not None:
                    by_blob.setdefault(ref.blob_index, {}).setdefault(ref.chunk_index, ref)
        for index, chunks in sorted(by_blob.items()):
            try:
                await self.chunks.prefetch(self.image.blobs[index], list(chunks.values()))
            except (BackendError, RafsError) as exc:
                log.warning("prefetch of blob %s failed: %s", self.image.blobs[index].blob_id,
                            exc)

    def metrics(self) -> dict[str, dict[str, object]]:
        """nydusd's /api/v1/metrics/backend and /blobcache bodies (§7.4) for this mount:
        {"backend": {...}, "blobcache": {...}}; "blobcache" is absent without a cache."""
        return self.chunks.metrics()

    async def destroy(self) -> None:
        return None


class _Sink:
    """Sequential writer over the guest's buffers."""

    def __init__(self, bufs: Sequence[memoryview]) -> None:
        self._bufs = bufs
        self._index = 0
        self._offset = 0
        self.filled = 0

    def put(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            buf = self._bufs[self._index]
            n = min(len(buf) - self._offset, len(data) - pos)
            buf[self._offset : self._offset + n] = data[pos : pos + n]
            self._advance(n)
            pos += n

    def zeros(self, size: int) -> None:
        while size:
            buf = self._bufs[self._index]
            n = min(len(buf) - self._offset, size)
            buf[self._offset : self._offset + n] = bytes(n)
            self._advance(n)
            size -= n

    def _advance(self, n: int) -> None:
        self.filled += n
        self._offset += n
        if self._offset == len(self._bufs[self._index]):
            self._index += 1
            self._offset = 0
