"""Log setup: plain text or one JSON object a line (``SMALLFIRST_LOG_FORMAT=json``), with the
request id and connection id of the request a line belongs to, and an access log without query strings."""

from __future__ import annotations

import atexit
import contextvars
import copy
import logging
import logging.handlers
import time
from queue import SimpleQueue
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("smallfirst_request_id", default=None)
connection_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("smallfirst_connection_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName", "color_message"}
_IDS = ("request_id", "connection_id")  # left out of a line logged outside any request
_GGML_LEVELS = {0: logging.CRITICAL, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR, 4: logging.DEBUG}
_native: list[Any] = []  # the installed llama.cpp callback, kept alive while the C library may call it


class ContextFilter(logging.Filter):
    """Stamps each record with the request id and connection id of the task that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        if getattr(record, "connection_id", None) is None:
            record.connection_id = connection_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, ids, and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and (value is not None or key not in _IDS):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class AccessPathFilter(logging.Filter):
    """uvicorn's request lines with the path only: a query string can carry what should not be logged.
    HTTP requests are logged by ``uvicorn.access``; WebSocket handshakes by ``uvicorn.error``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple):
            return True
        if record.name == "uvicorn.access" and len(args) == 5 and isinstance(args[2], str):
            client, method, full_path, version, status = args
            path = str(full_path).split("?", 1)[0]
            record.args = (client, method, path, version, status)
            record.__dict__.update(client=client, method=method, path=path, status=status)
        elif '"WebSocket %s"' in str(record.msg) and len(args) >= 2 and isinstance(args[1], str):
            path = args[1].split("?", 1)[0]
            record.args = (args[0], path, *args[2:])
            record.__dict__.update(client=args[0], method="WEBSOCKET", path=path)
        return True


def configure(level: str, fmt: str) -> dict[str, Any]:
    """Set up the root logger; returns the ``log_config`` for ``uvicorn.run`` (its loggers go to the root).

    Records are stamped with their ids where they are logged, then queued: a thread writes them,
    so the event loop never waits on stderr."""
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    queue: SimpleQueue[logging.LogRecord] = SimpleQueue()
    handler = _StampingQueueHandler(queue)
    handler.addFilter(ContextFilter())
    listener = logging.handlers.QueueListener(queue, stream)
    listener.start()
    atexit.register(listener.stop)  # writes what is still queued
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings (qdrant-client's, say) become records too, not raw stderr
    if fmt == "json":
        _route_llama_log()
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"path_only": {"()": AccessPathFilter}},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True, "filters": ["path_only"]},
            "uvicorn.access": {"level": level.upper(), "handlers": [], "propagate": True, "filters": ["path_only"]},
        },
    }


class _StampingQueueHandler(logging.handlers.QueueHandler):
    """Queues the record as it is (formatting happens on the writer thread, extras and all); only
    the message is resolved here, since its arguments may change once the caller goes on."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def _route_llama_log() -> None:
    """llama.cpp's own messages go through the ``llama_cpp`` logger (one record a line) instead of
    straight to stderr, so a JSON log stays JSON. Continuation fragments are joined until a newline."""
    import ctypes

    import llama_cpp

    logger = logging.getLogger("llama_cpp")
    pending: list[str] = []
    state = {"level": logging.INFO}

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != 5:  # 5 continues the previous message
            state["level"] = _GGML_LEVELS.get(level, logging.DEBUG)
        pending.append(text.decode("utf-8", "replace"))
        if pending[-1].endswith("\n"):
            message = "".join(pending).strip()
            pending.clear()
            if message and logger.isEnabledFor(state["level"]):
                logger.log(state["level"], message)

    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    _native[:] = [forward]
