"""Teacher data: every answer of the large tier appended to a size-rotated JSONL file, off the hot path."""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

DISTILL_LOG_VERSION = 2  # 2: each line carries its sources (hit_record), so the small prompt can be rebuilt
HIT_FIELDS = ("id", "score", "doc_id", "doc_version", "chunk_index", "title", "uri", "text", "page", "language")


def hit_record(hit: Any) -> dict[str, Any]:
    """A source as the log stores it: enough to rebuild the small tier's prompt for it later."""
    return {name: getattr(hit, name) for name in HIT_FIELDS}


class DistillLog:
    """A background writer; ``record`` never blocks (a full queue drops the line and counts it)."""

    def __init__(self, path: Path, max_bytes: int, backups: int, queue_size: int = 1024) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._work, name="smallfirst-distill", daemon=True)
        self._thread.start()

    def record(self, entry: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _rotate(self) -> None:
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))

    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            try:
                line = orjson.dumps(entry) + b"\n"
                if self.path.exists() and self.path.stat().st_size + len(line) > self._max_bytes:
                    self._rotate()
                with self.path.open("ab") as f:
                    f.write(line)
                self.written += 1
            except OSError:
                log.exception("cannot write the distillation log %s", self.path)
