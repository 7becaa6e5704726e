"""The API's one dispatcher: path -> (method, body present?) -> a short handler.

reference/nydusd-interface.md sections 2.2-2.7. Routing follows upstream's dbs-uhttp glue:

* the path must match exactly (no trailing slash, no percent-decoding): else 404 NoRoute;
* a known path with a method it does not serve, or with a body where none is expected (or
  none where one is required), is 400 BadRequest;
* `/api/v1/mount` checks its `mountpoint` query before anything else (400 QueryString);
* handler failures are ApiFailures wrapped in the endpoint's HttpError variant
  (`Mount(...)`, `Configure(...)`, ...) with the status they carry;
* success is 200 with a JSON body, or 204 with none (Kata insists on exactly 204 for
  mounts).

Handlers are coroutines over an `ApiContext` (the daemon's state, mounts, config store and
two callbacks), so this module does no I/O of its own and is tested with a plain context.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from vhostfs.api import errors, info, metrics
from vhostfs.api.configstore import ConfigStore
from vhostfs.api.errors import ApiFailure, HttpFailure
from vhostfs.api.http import Request, Response
from vhostfs.api.mounts import RAFS, MountCmd, MountRecord, MountTable
from vhostfs.errors import FsError
from vhostfs.fs.pseudo import path_key
from vhostfs.state import DaemonEvent, StateMachine, UnexpectedEvent

log = logging.getLogger(__name__)

LOG_LEVELS: Final = {"off": logging.CRITICAL + 10, "error": logging.ERROR,
                     "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG,
                     "trace": logging.DEBUG}


@dataclass(eq=False)
class ApiContext:
    """What the handlers may see and do."""

    state: StateMachine
    mounts: MountTable
    store: ConfigStore
    daemon_id: str | None = None
    supervisor: str | None = None
    set_log_level: Callable[[int], None] = field(default=logging.getLogger().setLevel)
    exit_requested: bool = False  # set by PUT /daemon/exit; the server acts after replying


Handler = Callable[[ApiContext, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    variant: str  # the HttpError variant failures are wrapped in
    methods: dict[tuple[str, bool], Handler]  # (method, has body) -> handler
    query: str | None = None  # a query key required before the method is even looked at


def ok(value: object) -> Response:
    return Response.json(200, value)


NO_CONTENT: Final = Response(204)


# -- body parsing -------------------------------------------------------------------------


def json_object(body: bytes | None) -> dict[str, object]:
    assert body is not None
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise errors.body_error(body, exc) from None
    if not isinstance(value, dict):
        raise errors.parse_body(f"invalid type: {type(value).__name__}, expected a map",
                                *errors.end_position(body))
    return value


def _string(doc: dict[str, object], body: bytes, key: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if value is None:
        raise errors.parse_body(f"missing field `{key}`", *errors.end_position(body))
    if not isinstance(value, str):
        raise errors.parse_body(f"invalid type: {json.dumps(value)}, expected a string",
                                *errors.end_position(body))
    return value


def mount_cmd(body: bytes | None) -> MountCmd:
    doc = json_object(body)
    assert body is not None
    source = _string(doc, body, "source")
    config = _string(doc, body, "config")
    fs_type = _string(doc, body, "fs_type", "")
    files = doc.get("prefetch_files")
    if files is not None and not (isinstance(files, list)
                                  and all(isinstance(f, str) for f in files)):
        raise errors.parse_body("invalid type: expected a sequence of strings",
                                *errors.end_position(body))
    return MountCmd(source, config, fs_type, tuple(files) if files is not None else None)


# -- daemon ---------------------------------------------------------------------------------


def backend_collection(ctx: ApiContext) -> dict[str, object]:
    return {
        record.mountpoint: {
            "backend_type": record.backend_type,
            "mountpoint": record.mountpoint,
            "mounted_time": info.mounted_time(record.mounted_ns),
            "config": info.render_config(record.storage) if record.storage else None,
        }
        for record in ctx.mounts.records.values()
    }


async def get_daemon(ctx: ApiContext, request: Request) -> Response:
    v1 = request.path.startswith("/api/v1/")
    return ok(info.daemon_info(state=ctx.state.state.name, daemon_id=ctx.daemon_id,
                               supervisor=ctx.supervisor,
                               backends=backend_collection(ctx) if v1 else None))


async def put_daemon(ctx: ApiContext, request: Request) -> Response:
    doc = json_object(request.body)
    assert request.body is not None
    level = LOG_LEVELS.get(_string(doc, request.body, "log_level").lower())
    if level is None:
        raise errors.PAYLOAD_TYPE.within("Configure")  # the route's variant is for GET
    ctx.set_log_level(level)
    return NO_CONTENT


async def get_events(ctx: ApiContext, request: Request) -> Response:
    return ok(metrics.events())


async def put_exit(ctx: ApiContext, request: Request) -> Response:
    ctx.exit_requested = True
    log.info("exit requested through the API")
    return NO_CONTENT


def _refuse(ctx: ApiContext, event: DaemonEvent) -> Response:
    """Start and Takeover: only meaningful before RUNNING, which the API never sees."""
    if not ctx.state.can(event):
        raise ApiFailure(400, UnexpectedEvent(event, ctx.state.state).debug)
    raise errors.UNSUPPORTED


async def put_start(ctx: ApiContext, request: Request) -> Response:
    return _refuse(ctx, DaemonEvent.START)


async def put_takeover(ctx: ApiContext, request: Request) -> Response:
    return _refuse(ctx, DaemonEvent.TAKEOVER)


async def put_sendfd(ctx: ApiContext, request: Request) -> Response:
    raise errors.UNSUPPORTED


async def get_backend_info(ctx: ApiContext, request: Request) -> Response:
    mountpoint = request.query.get("mountpoint")
    if mountpoint is None:
        raise errors.query_string("mountpoint")
    try:
        record = ctx.mounts.records.get(path_key(mountpoint))
    except FsError:
        record = None
    if record is None:
        raise errors.daemon_error(errors.NOT_FOUND)
    if record.backend_type != RAFS:
        raise errors.daemon_error(errors.NOT_RAFS)
    return ok(info.superblock_summary(record.fs))


# -- mounts ---------------------------------------------------------------------------------


async def post_mount(ctx: ApiContext, request: Request) -> Response:
    await ctx.mounts.mount(request.query["mountpoint"], mount_cmd(request.body))
    return NO_CONTENT


async def put_mount(ctx: ApiContext, request: Request) -> Response:
    await ctx.mounts.remount(request.query["mountpoint"], mount_cmd(request.body))
    return NO_CONTENT


async def delete_mount(ctx: ApiContext, request: Request) -> Response:
    await ctx.mounts.umount(request.query["mountpoint"])
    return NO_CONTENT


# -- metrics and config ---------------------------------------------------------------------


def _records(ctx: ApiContext) -> list[MountRecord]:
    return list(ctx.mounts.records.values())


async def get_metrics(ctx: ApiContext, request: Request) -> Response:
    return ok(metrics.global_metrics(_records(ctx), request.query.get("id")))


async def get_files(ctx: ApiContext, request: Request) -> Response:
    latest = request.query.get("latest", "false") == "true"
    return ok(metrics.files_metrics(_records(ctx), request.query.get("id"), latest))


async def get_pattern(ctx: ApiContext, request: Request) -> Response:
    return ok(metrics.access_patterns(_records(ctx), request.query.get("id")))


async def get_backend_metrics(ctx: ApiContext, request: Request) -> Response:
    return ok(metrics.backend_metrics(_records(ctx), request.query.get("id")))


async def get_blobcache(ctx: ApiContext, request: Request) -> Response:
    return ok(metrics.blobcache_metrics(_records(ctx), request.query.get("id")))


async def get_inflight(ctx: ApiContext, request: Request) -> Response:
    raise errors.INFLIGHT_UNSUPPORTED


async def get_config(ctx: ApiContext, request: Request) -> Response:
    return ok(ctx.store.get(request.query.get("id")))


async def put_config(ctx: ApiContext, request: Request) -> Response:
    ctx.store.update(request.query.get("id"), json_object(request.body))
    return NO_CONTENT


# -- v2 blobs (a virtio-fs daemon has no blob cache manager) --------------------------------


async def get_blobs(ctx: ApiContext, request: Request) -> Response:
    if "domain_id" not in request.query:
        raise errors.BAD_REQUEST
    raise errors.UNSUPPORTED  # upstream panics here (todo!()); 501 is the sane answer


async def put_blobs(ctx: ApiContext, request: Request) -> Response:
    doc = json_object(request.body)
    if not isinstance(doc.get("type"), str) or not isinstance(doc.get("id"), str):
        raise errors.BAD_REQUEST
    raise errors.UNSUPPORTED.within("CreateBlobObject")


async def delete_blobs(ctx: ApiContext, request: Request) -> Response:
    if "domain_id" in request.query:
        raise errors.UNSUPPORTED.within("DeleteBlobObject")
    if "blob_id" in request.query:
        return NO_CONTENT  # upstream: nothing to collect in a virtio-fs daemon
    raise errors.BAD_REQUEST


V1: Final = "/api/v1"
V2: Final = "/api/v2"
GET, PUT, POST, DELETE = "GET", "PUT", "POST", "DELETE"

ROUTES: Final[dict[str, Route]] = {
    V1 + "/daemon": Route("DaemonInfo", {(GET, False): get_daemon, (PUT, True): put_daemon}),
    V1 + "/daemon/events": Route("Events", {(GET, False): get_events}),
    V1 + "/daemon/exit": Route("Configure", {(PUT, False): put_exit}),
    V1 + "/daemon/start": Route("Configure", {(PUT, False): put_start}),
    V1 + "/daemon/fuse/sendfd": Route("Upgrade", {(PUT, False): put_sendfd}),
    V1 + "/daemon/fuse/takeover": Route("Upgrade", {(PUT, False): put_takeover}),
    V1 + "/daemon/backend": Route("FsBackendInfo", {(GET, False): get_backend_info}),
    V1 + "/mount": Route("Mount", {(POST, True): post_mount, (PUT, True): put_mount,
                                   (DELETE, False): delete_mount}, query="mountpoint"),
    V1 + "/metrics": Route("GlobalMetrics", {(GET, False): get_metrics}),
    V1 + "/metrics/files": Route("FsFilesMetrics", {(GET, False): get_files}),
    V1 + "/metrics/pattern": Route("Pattern", {(GET, False): get_pattern}),
    V1 + "/metrics/backend": Route("BackendMetrics", {(GET, False): get_backend_metrics}),
    V1 + "/metrics/blobcache": Route("BlobcacheMetrics", {(GET, False): get_blobcache}),
    V1 + "/metrics/inflight": Route("InflightMetrics", {(GET, False): get_inflight}),
    V1 + "/config": Route("Configure", {(GET, False): get_config, (PUT, True): put_config}),
    V2 + "/daemon": Route("DaemonInfo", {(GET, False): get_daemon, (PUT, True): put_daemon}),
    V2 + "/blobs": Route("GetBlobObjects", {(GET, False): get_blobs, (PUT, True): put_blobs,
                                            (DELETE, False): delete_blobs}),
}


async def dispatch(ctx: ApiContext, request: Request) -> Response:
    """The reply to one request; never raises for anything a client can send."""
    route = ROUTES.get(request.path)
    try:
        if route is None:
            raise errors.NO_ROUTE
        if route.query is not None and route.query not in request.query:
            raise errors.query_string(route.query)
        handler = route.methods.get((request.method, request.body is not None))
        if handler is None:
            raise errors.BAD_REQUEST
        try:
            return await handler(ctx, request)
        except ApiFailure as failure:
            raise failure.within(route.variant) from None
    except HttpFailure as failure:
        log.debug("%s %s -> %d %s", request.method, request.path, failure.status,
                  failure.message)
        return failure.response()
