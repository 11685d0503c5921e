"""The Litestar app: demo page, health, source files and the WebSocket endpoint."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from urllib.parse import urlsplit

from litestar import Litestar, MediaType, Request, Response, WebSocket, get, post, websocket
from litestar.connection import ASGIConnection
from litestar.datastructures import State, UploadFile
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.response import File
from litestar.static_files import create_static_files_router

from retrieval.errors import BadRequest, SmallfirstError
from retrieval.settings import Settings
from retrieval.store import COLLECTION_NAME
from service.runtime import Runtime
from service.session import POLICY_VIOLATION, Session
from service.worker import IngestWorker

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}


def origin_allowed(origin: str | None, host: str | None, settings: Settings) -> bool:
    """Same origin, localhost, or an origin named in ``allowed_origins``; no Origin header (non-browser) is fine."""
    if not origin:
        return True
    if origin.rstrip("/") in {o.rstrip("/") for o in settings.allowed_origins}:
        return True
    parts = urlsplit(origin)
    return parts.netloc == host or (parts.hostname or "") in LOCAL_HOSTS


def token_ok(connection: ASGIConnection, settings: Settings) -> bool:
    """The bearer token from the Authorization header or the ``token`` query parameter."""
    if not settings.api_token:
        return True
    header = connection.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else connection.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), settings.api_token.encode())


def _runtime(state: State) -> Runtime:
    return state.runtime  # type: ignore[no-any-return]


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def index() -> File:
    return File(WEB_DIR / "index.html", content_disposition_type="inline", media_type=MediaType.HTML)


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, object]]:
    runtime = _runtime(state)
    body: dict[str, object] = {"status": runtime.state}
    if runtime.error:
        body["error"] = runtime.error
    if runtime.ready:
        body["model"] = runtime.model_name
        body["load_seconds"] = round(runtime.load_seconds, 2)
    return Response(body, status_code=200 if runtime.ready else 503)


@get("/api/stats")
async def stats(request: Request, state: State) -> dict[str, object]:
    """Per-tier requests, tokens, cost and latency since start, plus escalation and fallback counts."""
    runtime = _runtime(state)
    if not token_ok(request, runtime.settings):
        raise NotAuthorizedException("missing or wrong bearer token")
    body = runtime.stats.as_dict()
    body["grounding"] = runtime.grounding_report()
    body["large_tier"] = (
        {"configured": True, "model": runtime.settings.large_model, "breaker": runtime.large.breaker.state}
        if runtime.large is not None else {"configured": False}
    )
    if runtime.distill is not None:
        body["distill"] = {"written": runtime.distill.written, "dropped": runtime.distill.dropped}
    return body


def _worker(request: Request, state: State) -> IngestWorker:
    runtime = _runtime(state)
    if not token_ok(request, runtime.settings):
        raise NotAuthorizedException("missing or wrong bearer token")
    runtime.require_ready()
    assert runtime.worker is not None
    return runtime.worker


@post("/api/ingest", status_code=202)
async def submit_ingest(request: Request, state: State) -> dict[str, object]:
    """Queue an ingest job; answers at once. JSON ``{"path": "/abs/folder", "collection": "docs"}`` ingests a
    folder on this machine; a multipart upload of files (field ``files``, optional ``collection``) stores them
    under ``DATA_DIR/uploads/COLLECTION`` and ingests that folder."""
    worker = _worker(request, state)
    if (request.headers.get("content-type") or "").startswith("multipart/form-data"):
        return await _submit_upload(request, worker, _runtime(state).settings)
    try:
        body = await request.json()
    except Exception:
        raise BadRequest(_INGEST_BODY) from None
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise BadRequest(_INGEST_BODY)
    collection = body.get("collection")
    if collection is not None and not isinstance(collection, str):
        raise BadRequest("'collection' must be a string")
    return worker.submit(body["path"], collection).as_dict()


_INGEST_BODY = 'the body must be JSON like {"path": "/absolute/folder"} or a multipart upload of files'


async def _submit_upload(request: Request, worker: IngestWorker, settings: Settings) -> dict[str, object]:
    form = await request.form()
    collection = form.get("collection") or settings.collection
    if not isinstance(collection, str) or not COLLECTION_NAME.match(collection):
        raise BadRequest("'collection' must be 1 to 64 letters, digits, '_' or '-'")
    uploads = [f for f in form.getall("files") if isinstance(f, UploadFile)] if "files" in form else []
    if not uploads:
        raise BadRequest("a multipart upload needs one or more files in the field 'files'")
    folder = settings.data_dir / "uploads" / collection
    folder.mkdir(parents=True, exist_ok=True)
    for upload in uploads:
        name = Path(upload.filename or "").name
        if not name or name.startswith("."):
            raise BadRequest(f"unusable file name {upload.filename!r}")
        (folder / name).write_bytes(await upload.read())
    return worker.submit(str(folder), collection).as_dict()


@get("/api/ingest")
async def list_ingest(request: Request, state: State) -> list[dict[str, object]]:
    """Recent ingest jobs, newest first."""
    return [job.as_dict() for job in reversed(_worker(request, state).jobs.values())]


@get("/api/ingest/{job_id:str}")
async def get_ingest(request: Request, state: State, job_id: str) -> dict[str, object]:
    """One job's state and progress."""
    job = _worker(request, state).jobs.get(job_id)
    if job is None:
        raise NotFoundException("no such ingest job")
    return job.as_dict()


@get("/api/source")
async def source(request: Request, state: State, doc_id: str, collection: str | None = None) -> File:
    """The original file of an ingested document (only files the store holds are served)."""
    runtime = _runtime(state)
    if not token_ok(request, runtime.settings):
        raise NotAuthorizedException("missing or wrong bearer token")
    runtime.require_ready()
    if collection is not None and not COLLECTION_NAME.match(collection):
        raise BadRequest("'collection' must be 1 to 64 letters, digits, '_' or '-'")
    store = await runtime.collection(collection)
    known = await runtime.in_store_thread(lambda: store.has_doc(doc_id))
    path = Path(doc_id)
    if not known or not path.is_file():
        raise NotFoundException("no such document")
    media = MediaType.HTML if path.suffix.lower() in (".html", ".htm") else MediaType.TEXT
    return File(path, content_disposition_type="inline", media_type=media)


@websocket("/ws")
async def ws_endpoint(socket: WebSocket) -> None:
    runtime = _runtime(socket.app.state)
    settings = runtime.settings
    if not origin_allowed(socket.headers.get("origin"), socket.headers.get("host"), settings) or not token_ok(socket, settings):
        await socket.close(code=POLICY_VIOLATION, reason="origin or token not allowed")
        return
    await Session(socket, runtime, settings).run()


def create_app(settings: Settings) -> Litestar:
    """Build the service; models and the store load in the background after start-up."""
    runtime = Runtime(settings)

    async def start(app: Litestar) -> None:
        runtime.start()

    async def stop(app: Litestar) -> None:
        await runtime.close()

    def smallfirst_error(request: Request, exc: SmallfirstError) -> Response[dict[str, object]]:
        status = 503 if exc.retryable else 400
        return Response({"code": exc.code, "message": exc.message, "retryable": exc.retryable}, status_code=status)

    return Litestar(
        route_handlers=[
            index, healthz, readyz, stats, source, submit_ingest, list_ingest, get_ingest, ws_endpoint,
            create_static_files_router(path="/static", directories=[WEB_DIR]),
        ],
        on_startup=[start],
        on_shutdown=[stop],
        state=State({"runtime": runtime}),
        exception_handlers={SmallfirstError: smallfirst_error},
        request_max_body_size=int(settings.max_file_mb * 4_000_000),
        debug=False,
    )
