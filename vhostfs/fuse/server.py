"""The FUSE dispatcher: one request chain in, one reply written, errors become errno here.

Theory of operation. `FuseServer.handle` reads the 40-byte in-header from the chain's
readable bytes, checks that its `len` matches what is readable, and sends the request to the
handler registered for its opcode (one dict lookup). Handlers (in `operations.py`) decode their
arguments, call the Filesystem and encode the reply with `replies`. The returned count is the
used length of the chain.

Invariants:

* This is the ONLY place where exceptions become negative errno values: FsError and any
  exception with an int `errno` (OSError, RafsError, backend errors) give that errno;
  malformed requests (ChainError, BadRequest) give EINVAL with a rate-limited log line;
  anything else gives EIO with a logged traceback. BaseExceptions (trio.Cancelled,
  KeyboardInterrupt) are never caught.
* FORGET, BATCH_FORGET and INTERRUPT never get a reply (used length 0), even on error.
* Before INIT (and after DESTROY) every request but INIT is answered EIO. A second INIT
  (guest reboot) ends the old session (fs.destroy) before starting a new one.
* Nothing is written past the writable capacity; a chain whose writable part cannot even
  hold the 16-byte out header gets nothing written and used length 0.

Spec: Linux include/uapi/linux/fuse.h, protocol 7.38; see `session.py` for INIT.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Sequence
from typing import Final

from vhostfs.errors import ChainError, FsError
from vhostfs.fuse import abi, replies
from vhostfs.fuse.filesystem import ROOT_INO, Context, Filesystem, Ino
from vhostfs.fuse.operations import Handler, Operations
from vhostfs.fuse.requests import BadRequest
from vhostfs.fuse.session import (
    MIN_MINOR,
    Session,
    describe,
    major_mismatch_reply,
    negotiate,
)
from vhostfs.ratelog import RateLimitedLog
from vhostfs.virtio.buffers import ChainReader, ChainWriter

logger = logging.getLogger(__name__)

Op = abi.Opcode
IN_HEADER: Final = abi.InHeader.STRUCT
IN_HEADER_SIZE: Final = abi.InHeader.SIZE
NO_REPLY: Final = frozenset((Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT))
_SESSION_OPS: Final = frozenset((Op.INIT, Op.DESTROY))
# fuse_in_header's opcode and nodeid only (len u32, opcode u32, unique u64, nodeid u64).
_OPCODE_NODEID: Final = struct.Struct("<4xI8xQ")
_MAX_ERRNO: Final = 4095  # the kernel treats larger "errors" as garbage
_CONTEXT_CACHE_SIZE: Final = 1024


class FuseServer:
    """Serves one FUSE session (one virtio-fs device) over a Filesystem.

    Not safe for two INIT/DESTROY at once, but ordinary requests may be handled
    concurrently (several queues or a nursery of handlers): handlers share no mutable state
    beyond the filesystem's own.
    """

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.session: Session | None = None
        self.ops = Operations(fs)
        self.bad_input = RateLimitedLog(logger)
        self._contexts: dict[tuple[int, int, int], Context] = {}
        self._handlers: dict[int, Handler] = self.ops.table()
        self._handlers[Op.INIT] = self._init
        self._handlers[Op.DESTROY] = self._destroy

    async def handle(self, reader: ChainReader, writer: ChainWriter) -> int:
        """Handle one request chain; returns the bytes written (the used length).

        Cancellation: may raise trio.Cancelled from inside the filesystem; nothing else
        escapes. The reader and writer are only used until this returns.
        """
        if reader.remaining < IN_HEADER_SIZE:
            return self._short_header(reader, writer)
        length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = reader.unpack(IN_HEADER)
        if opcode in NO_REPLY:
            return await self._no_reply(opcode, length, nodeid, extlen, reader)
        if writer.capacity < replies.OUT_HEADER_SIZE:
            self.bad_input.warning("FUSE %s: no room for a reply header", _name(opcode))
            return 0
        if length != IN_HEADER_SIZE + reader.remaining or extlen:
            self.bad_input.warning(
                "FUSE %s: header len %d, extlen %d, but %d bytes readable",
                _name(opcode), length, extlen, IN_HEADER_SIZE + reader.remaining,
            )  # fmt: skip
            return replies.error(writer, unique, errno.EINVAL)
        handler = self._handlers.get(opcode)
        if handler is None:
            return replies.error(writer, unique, errno.ENOSYS)
        if self.session is None and opcode != Op.INIT:
            return replies.error(writer, unique, errno.EIO)
        key = (uid, gid, pid)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._context(key)
        try:
            return await handler(unique, nodeid, ctx, reader, writer)
        except Exception as exc:
            return replies.error(writer, unique, self._errno_of(exc, opcode))

    def serves_inline(self) -> bool:
        """Whether requests are expected to run without awaiting: the root node's filesystem
        says so (a passthrough export, or a pseudo root whose mounts never await)."""
        return not self.fs.may_suspend(ROOT_INO)

    def may_suspend(self, request: Sequence[memoryview]) -> bool:
        """Whether serving `request` (its readable buffers) may await: True sends it to trio.

        Decided from the header before anything runs, so the answer costs no side effects:
        session start and end may await, FORGETs never do, everything else is the
        filesystem's call for the node. A header split over buffers takes the safe answer.
        """
        if not request or len(request[0]) < IN_HEADER_SIZE:
            return bool(request) and sum(map(len, request)) >= IN_HEADER_SIZE
        opcode, nodeid = _OPCODE_NODEID.unpack_from(request[0])
        if opcode in NO_REPLY:
            return False
        if opcode in _SESSION_OPS or self.session is None:
            return True
        return self.fs.may_suspend(Ino(nodeid))

    def _errno_of(self, exc: Exception, opcode: int) -> int:
        """The errno a guest is told for `exc` (logging what deserves it)."""
        if isinstance(exc, FsError):
            return exc.errno
        if isinstance(exc, ChainError):
            self.bad_input.warning("FUSE %s: malformed request: %s", _name(opcode), exc)
            return errno.EINVAL
        code = getattr(exc, "errno", None)
        if isinstance(code, int) and 0 < code <= _MAX_ERRNO:
            return code
        logger.exception("FUSE %s failed", _name(opcode), exc_info=exc)
        return errno.EIO

    def _context(self, key: tuple[int, int, int]) -> Context:
        if len(self._contexts) >= _CONTEXT_CACHE_SIZE:
            self._contexts.clear()
        ctx = self._contexts[key] = Context(*key)
        return ctx

    def _short_header(self, reader: ChainReader, writer: ChainWriter) -> int:
        got = reader.read(reader.remaining)
        self.bad_input.warning("FUSE request of %d bytes, shorter than its header", len(got))
        if writer.capacity < replies.OUT_HEADER_SIZE:
            return 0
        unique = int.from_bytes(got[8:16], "little") if len(got) >= 16 else 0
        return replies.error(writer, unique, errno.EIO)

    async def _no_reply(
        self, opcode: int, length: int, nodeid: int, extlen: int, reader: ChainReader
    ) -> int:
        if length != IN_HEADER_SIZE + reader.remaining or extlen:
            self.bad_input.warning("FUSE %s: header len %d disagrees", _name(opcode), length)
            return 0
        if self.session is None:
            return 0
        try:
            if opcode == Op.FORGET:
                self.ops.forget(nodeid, reader)
            elif opcode == Op.BATCH_FORGET:
                self.ops.batch_forget(reader, self.bad_input)
        except ChainError as exc:
            self.bad_input.warning("FUSE %s: malformed request: %s", _name(opcode), exc)
        except Exception:
            logger.exception("FUSE %s failed", _name(opcode))
        return 0

    # --- session ---------------------------------------------------------------------------

    async def _init(
        self, unique: int, nodeid: int, ctx: Context, reader: ChainReader, writer: ChainWriter
    ) -> int:
        data = reader.read(reader.remaining)
        if len(data) < abi.COMPAT_INIT_IN_SIZE:
            raise BadRequest(f"INIT with {len(data)} bytes of arguments")
        init = abi.decode_init_in(data)
        if init.major > abi.KERNEL_VERSION:
            logger.info("FUSE INIT %d.%d: asking for major 7", init.major, init.minor)
            return replies.record(writer, unique, major_mismatch_reply())
        if init.major < abi.KERNEL_VERSION or init.minor < MIN_MINOR:
            logger.warning("FUSE INIT %d.%d: unsupported version", init.major, init.minor)
            raise FsError(errno.EPROTO)
        await self._end_session()
        opts = await self.fs.init()
        session, reply = negotiate(init, opts)
        self.session = session
        self.ops.session = session
        logger.info(
            "FUSE INIT: guest 7.%d offered flags=%#x flags2=%#x; agreed %s",
            init.minor, init.flags, init.flags2, describe(session),
        )  # fmt: skip
        return replies.record(writer, unique, reply)

    async def _destroy(
        self, unique: int, nodeid: int, ctx: Context, reader: ChainReader, writer: ChainWriter
    ) -> int:
        await self._end_session()
        return replies.empty(writer, unique)

    async def _end_session(self) -> None:
        if self.session is not None:
            self.session = self.ops.session = None
            self._contexts.clear()
            await self.fs.destroy()

    async def reset(self) -> None:
        """The device stopped (guest reset): end the session as DESTROY would."""
        await self._end_session()


def _name(opcode: int) -> str:
    try:
        return Op(opcode).name
    except ValueError:
        return f"opcode {opcode}"
