"""The Litestar app: demo page, health, source files, ingest jobs and the WebSocket endpoint.

Access, Origin and Host are checked in one place (:mod:`smallfirst.service.server.security`); each route only names
its access level.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
from litestar import Litestar, MediaType, Request, Response, WebSocket, get, post, websocket
from litestar.datastructures import Cookie, State
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException
from litestar.logging.config import LoggingConfig
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.router import Router
from litestar.response import File
from litestar.static_files import create_static_files_router

from smallfirst.errors import BadRequest, Forbidden, SmallfirstError, TooLarge, UnsupportedMediaType
from smallfirst.settings import Settings
from smallfirst.threads import enable_checks
from smallfirst.retrieval.store import COLLECTION_NAME
from smallfirst.service.server import schemas, uploads
from smallfirst.service.server.limits import TRY_AGAIN_LATER, ConnectionLimiter
from smallfirst.service.server.metrics import CONTENT_TYPE, Metrics
from smallfirst.service.core.thresholds import grounding_report
from smallfirst.service.core.components import Components
from smallfirst.service.server.runtime import Runtime
from smallfirst.service.server.security import (
    ACCESS, SESSION_COOKIE, SOURCE_CSP, Access, Policy, access_guard, allowed_hosts, chosen_subprotocol,
    redact_server_logs, security_headers,
)
from smallfirst.service.server.session import Session

log = logging.getLogger(__name__)

def _web_dir() -> Path:
    """``web/`` as installed package data (``smallfirst/service/web``), else the source tree's."""
    service = Path(__file__).resolve().parent.parent
    installed = service / "web"
    return installed if (installed / "index.html").is_file() else service.parent / "web"


WEB_DIR = _web_dir()
PUBLIC = {ACCESS: Access.PUBLIC}
READ = {ACCESS: Access.READ}
ADMIN = {ACCESS: Access.ADMIN}
HTTP_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large", 415: "bad_request"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ADMIN_ERRORS = {
    401: ResponseSpec(schemas.ErrorBody, description="no token, or a wrong one"),
    403: ResponseSpec(schemas.ErrorBody, description="a foreign Origin"),
}


@get("/", media_type=MediaType.HTML, include_in_schema=False, opt=PUBLIC)
async def index(state: State) -> File:
    """The demo page; it sets the session cookie that lets this browser use /ws and /api/source."""
    policy: Policy = state.policy
    cookies = [Cookie(key=SESSION_COOKIE, value=policy.session, httponly=True, samesite="strict", path="/")] if policy.session else []
    return File(WEB_DIR / "index.html", filename="index.html", content_disposition_type="inline", media_type=MediaType.HTML,
                cookies=cookies)


@get("/healthz", opt=PUBLIC)
async def healthz() -> schemas.Health:
    """200 while the process runs."""
    return schemas.Health(status="ok")


@get("/readyz", opt=PUBLIC, responses={503: ResponseSpec(schemas.Readiness, description="still loading, or failed")})
async def readyz(runtime: Runtime) -> Response[schemas.Readiness]:
    """200 once the store, embedder and model are loaded; 503 before, or when loading failed."""
    body = schemas.Readiness(status=runtime.state, error=runtime.error or None)
    components = runtime.components
    if components is not None:
        body.model = components.model_name
        body.adapter = components.adapter.name if components.adapter is not None else None
        body.keystroke_copy = components.keystroke_model_path != components.model_path
        body.load_seconds = round(runtime.load_seconds, 2)
    return Response(body, status_code=200 if components is not None else 503)


@get("/api/stats", opt=ADMIN, responses=ADMIN_ERRORS)
async def stats(runtime: Runtime) -> schemas.Stats:
    """Per-tier requests, tokens, cost and latency since start, plus escalation and fallback counts."""
    body = runtime.stats.as_dict()
    components = runtime.components  # None while loading: what is not loaded yet reads as idle or unconfigured
    if components is None:
        body["grounding"] = grounding_report(runtime.settings)
        model, large = None, None
    else:
        body["grounding"] = components.calibrator.report()
        model, large = components.answer_model, components.large
    idle = model.queue.times.idle if model else None
    body["admission"] = {
        "service_s": round(idle.service_s, 3) if idle else 0.0,
        "deviation_s": round(idle.deviation_s, 3) if idle else 0.0,
        "first_token_s": round(idle.first_token_s, 3) if idle else 0.0,
        "typing_service_s": round(model.queue.times.typing.service_s, 3) if model and model.queue.times.typing.measured else None,
        "predicted_wait_s": round(model.predicted_wait_s(), 3) if model else 0.0,
        "budget_s": runtime.settings.answer_wait_budget_s, "waiting": model.waiting if model else 0,
        "shed": model.queue.shed if model else 0,
    }
    if model is not None and model.prefixes is not None:
        body["answer_kv_cache"] = model.prefixes.as_dict()
    if model is not None and model.passage_states is not None:
        body["answer_passage_states"] = {**model.passage_states.as_dict(), "assembled_tokens": model.assembled_tokens}
    body["large_tier"] = (
        {"configured": True, "model": runtime.settings.large_model, "breaker": large.breaker.state}
        if large is not None else {"configured": False}
    )
    if components is not None and components.distill is not None:
        body["distill"] = {"written": components.distill.written, "dropped": components.distill.dropped}
    if components is not None and components.adapter is not None:
        body["adapter"] = components.adapter.describe()
    return schemas.shaped(schemas.Stats, body)


@get("/metrics", opt=ADMIN, include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    """Prometheus metrics (text exposition format); the same token as the other admin reads."""
    registry: Metrics = state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE)


async def _read_json(request: Request[Any, Any, Any], limit: int) -> Any:
    """The JSON body, read up to ``limit`` bytes (a longer one is refused before it is all read)."""
    if (request.content_length or 0) > limit:
        raise TooLarge(f"the JSON body is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the JSON body is over the {limit}-byte limit")
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError:
        raise BadRequest(_INGEST_BODY) from None


async def _admit_collection(components: Components, collection: str) -> None:
    """Refuse a new collection once the store holds ``max_collections``."""
    retriever = components.retriever
    names = set(await retriever.in_store_thread(retriever.store.collections))
    names |= {job.collection for job in components.worker.jobs.values() if job.state in ("queued", "running")}
    if collection not in names and len(names) >= components.settings.max_collections:
        raise Forbidden(f"the store already holds {len(names)} collections (SMALLFIRST_MAX_COLLECTIONS)")


@post("/api/ingest", status_code=202, opt=ADMIN, request_max_body_size=None, responses=ADMIN_ERRORS)
async def submit_ingest(request: Request[Any, Any, Any], state: State, components: Components) -> schemas.IngestJob:
    """Queue an ingest job; answers at once. JSON ``{"path": "/abs/folder", "collection": "docs"}`` ingests a
    folder under an allowed root; a multipart upload of files (field ``files``, optional ``collection``) stores them
    under ``DATA_DIR/uploads/COLLECTION`` and ingests that folder."""
    settings, worker = components.settings, components.worker
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return await _submit_upload(request, components)
    if media != "application/json":
        raise UnsupportedMediaType("send JSON with 'Content-Type: application/json', or a multipart upload")
    body = await _read_json(request, settings.max_json_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise BadRequest(_INGEST_BODY)
    collection = body.get("collection")
    if collection is not None and not isinstance(collection, str):
        raise BadRequest("'collection' must be a string")
    policy: Policy = state.policy
    await _admit_collection(components, collection or settings.collection)
    return schemas.shaped(schemas.IngestJob, worker.submit(body["path"], collection, unrestricted=policy.is_local(request)).as_dict())


_INGEST_BODY = 'the body must be JSON like {"path": "/absolute/folder"} or a multipart upload of files'


async def _submit_upload(request: Request[Any, Any, Any], components: Components) -> schemas.IngestJob:
    settings = components.settings
    limit = int(settings.max_upload_mb * 1_000_000)
    if (request.content_length or 0) > limit + 1_000_000:
        raise TooLarge(f"the upload is over the {limit}-byte limit (SMALLFIRST_MAX_UPLOAD_MB)")
    staged = await uploads.receive_upload(request.stream(), request.headers.get("content-type", ""), settings)
    collection = staged.fields.get("collection") or settings.collection
    try:
        await _admit_collection(components, collection)
    except BaseException:
        await uploads.discard(staged)
        raise
    folder = await uploads.commit(staged, collection, settings)
    return schemas.shaped(schemas.IngestJob, components.worker.submit(str(folder), collection).as_dict())


@get("/api/ingest", opt=ADMIN, responses=ADMIN_ERRORS)
async def list_ingest(components: Components) -> list[schemas.IngestJob]:
    """Recent ingest jobs, newest first."""
    return [schemas.shaped(schemas.IngestJob, job.as_dict()) for job in reversed(components.worker.jobs.values())]


@get("/api/ingest/{job_id:str}", opt=ADMIN, responses=ADMIN_ERRORS)
async def get_ingest(components: Components, job_id: str) -> schemas.IngestJob:
    """One job's state and progress."""
    job = components.worker.jobs.get(job_id)
    if job is None:
        raise NotFoundException("no such ingest job")
    return schemas.shaped(schemas.IngestJob, job.as_dict())


def _servable(found: tuple[str, str] | None) -> Path | None:
    """The stored file, only while it still resolves inside the folder it was ingested from."""
    if found is None:
        return None
    try:
        path, root = Path(found[0]), Path(found[1])
        real = path.resolve()
        return real if real.is_relative_to(root.resolve()) and real.is_file() else None
    except (OSError, RuntimeError, ValueError):
        return None


@get("/api/source", opt=READ)
async def source(components: Components, doc_id: str, collection: str | None = None) -> File:
    """The original file of an ingested document, as plain text (PDFs as a download), never as active content."""
    if collection is not None and not COLLECTION_NAME.match(collection):
        raise BadRequest("'collection' must be 1 to 64 letters, digits, '_' or '-'")
    retriever = components.retriever
    store = await retriever.collection(collection)
    found = await retriever.in_store_thread(lambda: store.source_of(doc_id))
    path = await asyncio.to_thread(_servable, found)
    if path is None:
        raise NotFoundException("no such document")
    headers = {"Content-Security-Policy": SOURCE_CSP, "X-Content-Type-Options": "nosniff"}
    if path.suffix.lower() == ".pdf":
        return File(path, filename=path.name, content_disposition_type="attachment",
                    media_type="application/octet-stream", headers=headers)
    return File(path, filename=path.name, content_disposition_type="inline",
                media_type=MediaType.TEXT, headers=headers)


@websocket("/ws", opt=READ)
async def ws_endpoint(socket: WebSocket[Any, Any, Any], runtime: Runtime) -> None:
    """The streaming protocol. Past the connection caps the socket is accepted and closed with 1013."""
    limiter: ConnectionLimiter = socket.app.state.connections
    client = socket.client.host if socket.client else "unknown"
    subprotocol = chosen_subprotocol(socket)
    refused = limiter.acquire(client)
    if refused is not None:
        await socket.accept(subprotocols=subprotocol)
        await socket.close(code=TRY_AGAIN_LATER, reason=refused[:120])
        return
    try:
        await Session(socket, runtime, runtime.settings, subprotocol, socket.app.state.metrics).run()
    finally:
        limiter.release(client)


def _request_id(request: Request[Any, Any, Any]) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


def smallfirst_error(request: Request[Any, Any, Any], exc: SmallfirstError) -> Response[dict[str, object]]:
    status = exc.http_status
    retry_after_ms = getattr(exc, "retry_after_ms", None)
    headers = {"Retry-After": str(max(1, -(-retry_after_ms // 1000)))} if retry_after_ms is not None else None
    return Response({"code": exc.code, "message": exc.message, "retryable": exc.retryable}, status_code=status,
                    headers=headers)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, object]]:
    code = HTTP_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
    return Response({"code": code, "message": exc.detail,
                     "retryable": exc.status_code >= 500}, status_code=exc.status_code, headers=exc.headers)


def unhandled_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, object]]:
    """Any other exception: logged with a request id, which the client also gets (and nothing else)."""
    request_id = _request_id(request)
    log.error("request %s failed: %s %s", request_id, request.method, request.url.path, exc_info=exc)
    return Response({"code": "internal", "message": f"internal error; see the server log for request {request_id}",
                     "retryable": False, "request_id": request_id}, status_code=500, headers={"X-Request-Id": request_id})


def dependencies(runtime: Runtime) -> dict[str, Provide]:
    """What routes may ask for: ``runtime`` (readiness, answers while loading) and ``components``
    (``Busy``, so 503, until loaded, or when loading failed)."""

    def provide_runtime() -> Runtime:
        return runtime

    def provide_components() -> Components:
        return runtime.require()

    return {"runtime": Provide(provide_runtime, sync_to_thread=False),
            "components": Provide(provide_components, sync_to_thread=False)}


def create_app(settings: Settings) -> Litestar:
    """Build the service; models and the store load in the background after start-up."""
    enable_checks(settings.thread_checks)
    runtime = Runtime(settings)
    policy = Policy.start(settings)
    connections = ConnectionLimiter(settings.max_connections, settings.max_connections_per_client)
    registry = Metrics()
    registry.watch_runtime(runtime, connections)
    if not policy.enforced:
        log.warning("SMALLFIRST_REQUIRE_TOKEN is off: anyone who reaches %s:%s may ingest and read stats",
                    settings.host, settings.port)

    async def start(app: Litestar) -> None:
        redact_server_logs()
        runtime.start()

    async def stop(app: Litestar) -> None:
        await runtime.close()

    return Litestar(
        route_handlers=[
            index, healthz, readyz, stats, metrics, source, submit_ingest, list_ingest, get_ingest, ws_endpoint,
            create_static_files_router(path="/static", directories=[WEB_DIR], opt=PUBLIC),
        ],
        on_startup=[start],
        on_shutdown=[stop],
        dependencies=dependencies(runtime),
        state=State({"policy": policy, "connections": connections, "metrics": registry}),
        guards=[access_guard],
        allowed_hosts=allowed_hosts(settings),
        before_send=[security_headers],
        exception_handlers={SmallfirstError: smallfirst_error, HTTPException: http_error, Exception: unhandled_error},
        request_max_body_size=settings.max_json_bytes,
        # The root logger is the CLI's (smallfirst.service.server.logs): Litestar's records go there, in its format.
        logging_config=LoggingConfig(configure_root_logger=False, log_exceptions="never",
                                     loggers={"litestar": {"level": "INFO", "handlers": [], "propagate": True}}),
        openapi_config=OpenAPIConfig(
            title="smallfirst", version="0.1.0", use_handler_docstrings=True,
            description="Streaming RAG service; the streaming protocol itself is the WebSocket at /ws (see docs/protocol.md).",
            openapi_router=Router("/schema", route_handlers=[], opt=READ, include_in_schema=False),  # the token, or the demo page's cookie
        ),
        debug=False,
    )
