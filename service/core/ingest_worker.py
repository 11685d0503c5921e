"""The ingestion worker inside the service: a job queue, run at the lowest CPU priority.

Each job runs the same ``sync_folder`` routine as the CLI, on its own thread. Store calls are
handed to the thread that owns the embedded store; embedding batches go through the CPU
scheduler at ingest priority, so keystrokes and answers slip in between batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from smallfirst.ingest.lock import WriterLock
from smallfirst.ingest.sync import ChunkingOptions, sync_folder
from smallfirst.retrieval.embedder import Embedder
from smallfirst.errors import BadRequest, Busy, SmallfirstError
from smallfirst.settings import Settings
from smallfirst.retrieval.store import COLLECTION_NAME, ChunkPoint, DocState, VectorStore
from smallfirst.service.core.ingest_roots import ingest_folder
from smallfirst.service.scheduler import CpuScheduler, Priority

log = logging.getLogger(__name__)

T = TypeVar("T")
KEEP_JOBS = 100
QUEUE_LIMIT = 32


class ThreadBoundStore:
    """A :class:`~smallfirst.retrieval.store.ChunkStore` whose every call runs on the thread that owns the store."""

    def __init__(self, store: VectorStore, executor: ThreadPoolExecutor, on_write: Callable[[int], None]) -> None:
        self._store = store
        self._executor = executor
        self._on_write = on_write

    def _on_owner(self, fn: Callable[[], T]) -> T:
        return self._executor.submit(fn).result()

    def inventory(self) -> dict[str, dict[str, DocState]]:
        return self._on_owner(self._store.inventory)

    def upsert(self, points: Iterable[ChunkPoint]) -> int:
        batch = list(points)
        written = self._on_owner(lambda: self._store.upsert(batch))
        self._on_write(written)
        return written

    def delete_doc(self, doc_id: str, keep_version: str | None = None) -> None:
        self._on_owner(lambda: self._store.delete_doc(doc_id, keep_version))


@dataclass
class IngestJob:
    id: str
    folder: str
    collection: str
    state: str = "queued"  # queued, running, done, failed
    files_total: int = 0
    files_done: int = 0
    chunks_written: int = 0
    summary: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "folder": self.folder, "collection": self.collection, "state": self.state, "files_total": self.files_total,
            "files_done": self.files_done, "chunks_written": self.chunks_written,
            "progress": round(self.files_done / self.files_total, 4) if self.files_total else (1.0 if self.state == "done" else 0.0),
            "summary": self.summary, "error": self.error, "created": self.created, "finished": self.finished,
        }


def _totals(summary: dict[str, Any]) -> dict[str, int]:
    """A job summary as counts: ``files_added`` ... ``files_failed``, ``chunks_written``, ``chunks_deleted``."""
    counts = {f"files_{k}": summary[k] for k in ("added", "changed", "unchanged", "removed")}
    counts["files_failed"] = len(summary["failed"])
    counts.update(chunks_written=summary["chunks_written"], chunks_deleted=summary["chunks_deleted"])
    return counts


class IngestWorker:
    """Runs ingest jobs one at a time (the one writer), in submission order."""

    def __init__(self, settings: Settings, scheduler: CpuScheduler, embedder: Embedder, store: VectorStore,
                 store_thread: ThreadPoolExecutor, on_job_done: Callable[[str], None] | None = None) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._embedder = embedder
        self._store = store
        self._store_thread = store_thread
        self._on_job_done = on_job_done  # told the collection each finished job wrote to
        self._queue: asyncio.Queue[IngestJob] = asyncio.Queue()
        self.jobs: OrderedDict[str, IngestJob] = OrderedDict()
        self.totals: Counter[str] = Counter()  # files and chunks of every finished job, by result (for /metrics)
        self._loop = asyncio.get_running_loop()
        self._tasks = [self._loop.create_task(self._run())]
        for folder in settings.watch_folders:
            self._tasks.append(self._loop.create_task(self._watch(folder)))

    async def _watch(self, folder: str) -> None:
        """Ingest a watched folder now, then after each burst of changes to its documents."""
        from watchfiles import awatch

        from smallfirst.ingest.loaders import SUPPORTED_SUFFIXES

        try:
            self.submit(folder)
            async for changes in awatch(folder, debounce=1000, recursive=True):
                if any(Path(p).suffix.lower() in SUPPORTED_SUFFIXES for _, p in changes):
                    if not any(j.folder == str(Path(folder).resolve()) and j.state == "queued" for j in self.jobs.values()):
                        self.submit(folder)
        except (SmallfirstError, OSError) as exc:
            log.error("cannot watch %s: %s", folder, getattr(exc, "message", exc))

    def submit(self, folder: str, collection: str | None = None, unrestricted: bool = False) -> IngestJob:
        """Queue a job for ``folder``, which must lie under an allowed root unless ``unrestricted``
        (the local CLI user); see :mod:`smallfirst.service.core.ingest_roots`."""
        collection = collection or self._store.collection
        if not COLLECTION_NAME.match(collection):
            raise BadRequest("'collection' must be 1 to 64 letters, digits, '_' or '-'")
        path = ingest_folder(folder, self._settings, unrestricted)
        if self._queue.qsize() >= QUEUE_LIMIT:
            raise Busy(f"{QUEUE_LIMIT} ingest jobs are already waiting")
        job = IngestJob(id=uuid.uuid4().hex[:12], folder=str(path), collection=collection)
        self.jobs[job.id] = job
        while len(self.jobs) > KEEP_JOBS:
            oldest = next(iter(self.jobs))
            if self.jobs[oldest].state in ("queued", "running"):
                break
            del self.jobs[oldest]
        self._queue.put_nowait(job)
        return job

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            job.state = "running"
            try:
                job.summary = (await asyncio.to_thread(self._sync, job)).as_dict()
                job.state = "done"
                self.totals.update(_totals(job.summary))
            except Exception as exc:  # a job's failure is reported on the job, never kills the worker
                log.exception("ingest job %s failed", job.id)
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                job.finished = time.time()
                if self._on_job_done is not None:
                    self._on_job_done(job.collection)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        batch = list(texts)
        future = asyncio.run_coroutine_threadsafe(
            self._scheduler.run(Priority.INGEST, self._embedder.embed_documents, batch, len(batch)), self._loop)
        return future.result()

    def _sync(self, job: IngestJob) -> Any:
        def on_start(total: int) -> None:
            job.files_total = total

        def on_file(path: Path, outcome: str) -> None:
            job.files_done += 1

        def on_write(count: int) -> None:
            job.chunks_written += count

        target = self._store.with_collection(job.collection)
        self._store_thread.submit(target.ensure_collection).result()
        store = ThreadBoundStore(target, self._store_thread, on_write)
        with WriterLock(self._settings.data_dir):
            return sync_folder(
                Path(job.folder), store, self._embed, self._embedder.count_tokens,
                ChunkingOptions.from_settings(self._settings), batch_size=self._settings.ingest_batch_size,
                on_file=on_file, on_start=on_start,
            )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
