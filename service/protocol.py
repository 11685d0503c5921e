"""The WebSocket protocol: parse and validate client frames, build server frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from smallfirst.retrieval.evidence import Evidence
from smallfirst.errors import BadRequest, SmallfirstError, TooLarge
from smallfirst.settings import Settings
from smallfirst.retrieval.store import COLLECTION_NAME, Hit

PROTOCOL_VERSION = 1
MAX_ID_CHARS = 128
MAX_PING_TS_CHARS = 64
MAX_SAFE_INT = 2**53
SNIPPET_CHARS = 240


@dataclass(frozen=True)
class Complete:
    id: str
    text: str
    max_tokens: int
    collection: str | None = None


@dataclass(frozen=True)
class Ask:
    id: str
    question: str
    top_k: int
    tier: str | None
    collection: str | None


@dataclass(frozen=True)
class Cancel:
    id: str


@dataclass(frozen=True)
class Ping:
    ts: Any


Message = Complete | Ask | Cancel | Ping


class FrameError(SmallfirstError):
    """A client frame was refused; carries the request id when one could be read."""

    def __init__(self, error: SmallfirstError, request_id: str | None) -> None:
        super().__init__(error.message)
        self.code = error.code
        self.retryable = error.retryable
        self.request_id = request_id


def _id(frame: dict[str, Any]) -> str:
    value = frame.get("id")
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("'id' must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise BadRequest(f"'id' is longer than {MAX_ID_CHARS} characters")
    return value


def _int(frame: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = frame.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be an integer")
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low} and {high}")
    return value


def _scalar(value: Any) -> Any:
    """What a pong may echo: a number, a short string, a boolean or null; anything else becomes null."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else None
    if isinstance(value, str):
        return value[:MAX_PING_TS_CHARS]
    return None


def _collection(frame: dict[str, Any]) -> str | None:
    value = frame.get("collection")
    if value is not None and (not isinstance(value, str) or not COLLECTION_NAME.match(value)):
        raise BadRequest("'collection' must be 1 to 64 letters, digits, '_' or '-'")
    return value


def _text(frame: dict[str, Any], key: str, limit: int, allow_empty: bool) -> str:
    if key not in frame:
        raise BadRequest(f"missing '{key}'")
    value = frame[key]
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string")
    if not allow_empty and not value.strip():
        raise BadRequest(f"'{key}' must not be empty")
    if len(value) > limit:
        raise TooLarge(f"'{key}' is {len(value)} characters; the limit is {limit}")
    return value


def parse_frame(raw: str | bytes | None, settings: Settings) -> Message:
    """Turn one client frame into a message, or raise :class:`FrameError`."""
    if raw is None or isinstance(raw, (bytes, bytearray)):
        raise FrameError(BadRequest("frames must be JSON text, not binary"), None)
    if len(raw.encode("utf-8")) > settings.max_frame_bytes:
        raise FrameError(TooLarge(f"frame is over the {settings.max_frame_bytes}-byte limit"), None)
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError(BadRequest(f"malformed JSON: {exc}"), None) from None
    if not isinstance(frame, dict):
        raise FrameError(BadRequest("a frame must be a JSON object"), None)
    raw_id = frame.get("id")
    request_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_ID_CHARS else None
    try:
        return _message(frame, settings)
    except SmallfirstError as exc:
        raise FrameError(exc, request_id) from None


def _message(frame: dict[str, Any], settings: Settings) -> Message:
    kind = frame.get("type")
    if kind == "complete":
        return Complete(
            id=_id(frame),
            text=_text(frame, "text", settings.max_text_chars, allow_empty=True),
            max_tokens=_int(frame, "max_tokens", settings.complete_max_tokens, 1, settings.complete_max_tokens),
            collection=_collection(frame),
        )
    if kind == "ask":
        tier = frame.get("tier")
        if tier is not None and tier not in ("small", "large"):
            raise BadRequest("'tier' must be \"small\" or \"large\"")
        collection = _collection(frame)
        return Ask(
            id=_id(frame),
            question=_text(frame, "question", settings.max_question_chars, allow_empty=False),
            top_k=_int(frame, "top_k", settings.top_k, 1, settings.max_top_k),
            tier=tier, collection=collection,
        )
    if kind == "cancel":
        return Cancel(id=_id(frame))
    if kind == "ping":
        return Ping(ts=_scalar(frame.get("ts")))
    if kind is None:
        raise BadRequest("missing 'type'")
    raise BadRequest(f"unknown type {str(kind)[:40]!r}; expected complete, ask, cancel or ping")


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def ready_frame(settings: Settings, model: str, adapter: str | None = None) -> dict[str, Any]:
    """The first frame of a connection; ``adapter`` names the distilled adapter the answers use, if any."""
    return {
        "type": "ready", "protocol": PROTOCOL_VERSION, "model": model, "adapter": adapter,
        "limits": {
            "max_frame_bytes": settings.max_frame_bytes, "max_question_chars": settings.max_question_chars,
            "max_text_chars": settings.max_text_chars, "max_top_k": settings.max_top_k,
            "complete_max_tokens": settings.complete_max_tokens, "max_inflight": settings.max_inflight,
            "rate_limit_per_s": settings.rate_limit_per_s,
        },
    }


def error_frame(error: SmallfirstError, request_id: str | None) -> dict[str, Any]:
    frame = {"type": "error", "id": request_id, "code": error.code, "message": error.message, "retryable": error.retryable}
    retry_after_ms = getattr(error, "retry_after_ms", None)
    if retry_after_ms is not None:
        frame["retry_after_ms"] = retry_after_ms
    return frame


def source_entry(hit: Hit, evidence: Evidence | None = None) -> dict[str, Any]:
    """One entry of a ``sources`` frame; ``evidence`` offsets index the chunk's text."""
    text = " ".join(hit.text[: SNIPPET_CHARS * 4].split())  # a snippet reads no further, however long the chunk
    snippet = text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"
    entry: dict[str, Any] = {
        "doc_id": hit.doc_id, "title": hit.title, "uri": hit.uri, "chunk_index": hit.chunk_index,
        "score": round(hit.score, 4), "snippet": snippet,
    }
    if evidence is not None:
        entry["evidence"] = evidence.as_dict()
    if hit.page is not None:
        entry["page"] = hit.page
    if hit.language is not None:
        entry["language"] = hit.language
    return entry
