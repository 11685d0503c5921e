"""Everything the service loads once: scheduler, store, embedder, small-model contexts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from smallfirst.retrieval.calibration import Calibration, calibrate, offtopic_questions, pseudo_questions
from smallfirst.retrieval.classifier import HardQueryClassifier
from smallfirst.retrieval.evidence import EvidenceSet, find_evidence
from smallfirst.retrieval.embedder import Embedder
from smallfirst.errors import BadRequest, Busy, RetrievalUnavailable, SmallfirstError
from smallfirst.settings import Settings
from smallfirst.retrieval.store import Hit, VectorStore
from smallfirst.service.autocomplete.engine import Autocompleter
from smallfirst.service.distill.adapter import Adapter, load_adapter
from smallfirst.service.distill.log import DistillLog
from smallfirst.service.llm.breaker import CircuitBreaker
from smallfirst.service.llm.local import LocalBackend, Tokenizer, bundled_model_path
from smallfirst.service.llm.remote import RemoteBackend
from smallfirst.service.scheduler import CpuScheduler, Priority
from smallfirst.service.server.stats import Stats
from smallfirst.service.server.worker import IngestWorker

log = logging.getLogger(__name__)

T = TypeVar("T")

GROUNDING_TOP_K = 3
CALIBRATION_SAMPLE_CHUNKS = 300
STORE_OPEN_ATTEMPTS = 6  # a Qdrant server: 1 + 2 + 4 + 8 + 8 s of backoff before giving up
CALIBRATION_BATCH = 16  # texts embedded per scheduler step while calibrating (a keystroke waits at most one)


def write_service_file(settings: Settings) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    settings.service_file.write_text(json.dumps({"url": f"http://{host}:{settings.port}", "pid": os.getpid()}))


def remove_service_file(settings: Settings) -> None:
    path = settings.service_file
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


class Runtime:
    """Loads the components in the background and hands them out once ready."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scheduler = CpuScheduler()
        # qdrant-client's embedded store keeps a SQLite connection bound to the thread that opened it.
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smallfirst-store")
        self.state = "loading"
        self.error: str | None = None
        self.model_name = ""
        self.adapter: Adapter | None = None
        self.store: VectorStore | None = None
        self.embedder: Embedder | None = None
        self.tokenizer: Tokenizer | None = None
        self.answer_model: LocalBackend | None = None
        self.autocomplete: Autocompleter | None = None
        self.classifier: HardQueryClassifier | None = None
        self.large: RemoteBackend | None = None
        self.stats = Stats()
        self.distill: DistillLog | None = None
        self.worker: IngestWorker | None = None
        self._known_collections: set[str] = set()
        self.calibrations: dict[str, Calibration] = {}
        self._calibrating: dict[str, asyncio.Task[None]] = {}
        self._recalibrate: set[str] = set()
        self._offtopic_vectors: np.ndarray | None = None
        self._task: asyncio.Task[None] | None = None
        self.load_seconds = 0.0

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def start(self) -> None:
        self.scheduler.start()
        self._task = asyncio.get_running_loop().create_task(self._load())

    async def wait_ready(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _load(self) -> None:
        started = time.perf_counter()
        s = self.settings
        try:
            model_path = Path(s.model_path) if s.model_path else await asyncio.to_thread(bundled_model_path)
            self.model_name = model_path.name
            if s.adapter_path is not None:
                self.adapter = await asyncio.to_thread(load_adapter, s.adapter_path, model_path)
            answer_lora = self.adapter.path if self.adapter is not None else None
            threads = s.model_threads
            self.embedder = await self.scheduler.run(
                Priority.CONTROL, lambda: Embedder(s.embed_model, s.query_cache_size, threads, s.embed_backend, s.embed_cache_dir)
            )
            dimension = self.embedder.dimension
            self.store = await self._open_store(dimension)
            self.tokenizer = await asyncio.to_thread(Tokenizer, model_path)
            self.autocomplete = await Autocompleter.load(
                self.scheduler, model_path, s.complete_slots, s.complete_ctx, threads,
                self._grounding_hits if s.complete_grounding else None,
                context_tokens=s.complete_context_tokens, min_score=s.min_score, prefix_reuse=s.complete_prefix_reuse,
                lora_path=answer_lora if s.complete_adapter else None,
            )
            self.answer_model = await LocalBackend.load(
                "small", model_path, s.answer_ctx, threads, self.scheduler, Priority.ANSWER,
                prefill_step=s.prefill_step_tokens, queue_limit=s.answer_queue_limit,
                prefix_cache_bytes=int(s.answer_kv_cache_mb * 1024 * 1024), lora_path=answer_lora,
            )
            self.answer_model.yield_to = lambda: self.autocomplete is not None and self.autocomplete.active
            self.classifier = HardQueryClassifier.load()
            if s.large_url:
                self.large = RemoteBackend(
                    s.large_url, s.large_model, s.large_api_key, connect_timeout_s=s.large_connect_timeout_s,
                    first_token_timeout_s=s.large_first_token_timeout_s, token_timeout_s=s.large_token_timeout_s,
                    total_timeout_s=s.large_total_timeout_s, retries=s.large_retries,
                    breaker=CircuitBreaker(s.breaker_failures, s.breaker_reset_s), count_tokens=self.tokenizer.count,
                )
            if s.distill_log is not None:
                self.distill = DistillLog(s.distill_log, s.distill_max_bytes, s.distill_backups)
            self.worker = IngestWorker(s, self.scheduler, self.embedder, self.store, self._store_thread,
                                       on_job_done=self.schedule_calibration)
            if not s.qdrant_url:
                write_service_file(s)
            self.load_seconds = time.perf_counter() - started
            self.state = "ready"
            log.info("ready in %.1f s: model %s%s, collection %r", self.load_seconds, model_path,
                     f" with the adapter {self.adapter.name}" if self.adapter is not None else "", s.collection)
            self.schedule_calibration(s.collection)
        except SmallfirstError as exc:
            self._fail(exc.message)
        except Exception as exc:  # anything else is a bug, but the health endpoints must still answer
            log.exception("loading failed")
            self._fail(f"{type(exc).__name__}: {exc}")

    async def _open_store(self, dimension: int) -> VectorStore:
        """Open the store. A Qdrant server gets a few tries with backoff: in a deployment it may still be
        starting, and replicas starting together may race to create the same collection (the loser's
        next try finds it)."""
        s = self.settings
        attempts = STORE_OPEN_ATTEMPTS if s.qdrant_url else 1
        for attempt in range(1, attempts + 1):
            try:
                return await self.in_store_thread(
                    lambda: VectorStore.open(s.collection, dimension, path=s.qdrant_path, url=s.qdrant_url,
                                             api_key=s.qdrant_api_key))
            except RetrievalUnavailable as exc:
                if attempt == attempts:
                    raise
                delay = min(2.0 ** (attempt - 1), 8.0)
                log.warning("Qdrant at %s is not usable yet (%s); try %d of %d in %.0f s",
                            s.qdrant_url, exc.message, attempt + 1, attempts, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _fail(self, message: str) -> None:
        self.state = "failed"
        self.error = message
        log.error("not ready: %s", message)

    def require_ready(self) -> None:
        if self.state == "failed":
            raise Busy(f"the service failed to start: {self.error}")
        if not self.ready:
            raise Busy("the service is still loading its models; try again in a few seconds")

    async def in_store_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._store_thread, fn)

    async def embed_query(self, text: str) -> Any:
        """The query vector: from the cache on the loop, else computed on the scheduler."""
        assert self.embedder is not None
        found = self.embedder.cached(text)
        if found is not None:
            return found
        return await self.scheduler.run(Priority.ANSWER, self.embedder.embed_query, text)

    async def find_evidence(self, question: str, hits: Sequence[Hit]) -> EvidenceSet:
        """Score the sentences of ``hits`` for the question (one short scheduler step: the embedder's tokenizer)."""
        assert self.embedder is not None
        return await self.scheduler.run(Priority.ANSWER, find_evidence, question, hits, self.embedder.token_vectors)

    # Grounding threshold per collection ---------------------------------------------------

    def grounding_threshold(self, collection: str | None) -> float | None:
        """The threshold for ``collection``: the setting when set, else its calibration (None
        until it exists, and then a calibration is started)."""
        if self.settings.grounding_threshold is not None:
            return self.settings.grounding_threshold
        name = collection or self.settings.collection
        found = self.calibrations.get(name)
        if found is None and name not in self._calibrating:
            self.schedule_calibration(name)
        return found.threshold if found is not None else None

    def schedule_calibration(self, collection: str) -> None:
        """Calibrate ``collection`` in the background (again once the running one ends, if one runs)."""
        if self.settings.grounding_threshold is not None:
            return
        if collection in self._calibrating:
            self._recalibrate.add(collection)
            return
        task = asyncio.get_running_loop().create_task(self._calibrate(collection))
        self._calibrating[collection] = task

    async def _embed_in_steps(self, texts: Sequence[str]) -> np.ndarray:
        assert self.embedder is not None
        embedder = self.embedder
        parts = [await self.scheduler.run(Priority.INGEST, embedder.embed_documents, list(texts[i:i + CALIBRATION_BATCH]))
                 for i in range(0, len(texts), CALIBRATION_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)

    async def _calibrate(self, collection: str) -> None:
        try:
            while True:
                self._recalibrate.discard(collection)
                store = await self.collection(collection)
                texts = await self.in_store_thread(lambda: store.sample_texts(CALIBRATION_SAMPLE_CHUNKS))
                questions = await asyncio.to_thread(pseudo_questions, texts, self.settings.calibration_questions)
                if not questions:
                    self.calibrations.pop(collection, None)
                else:
                    if self._offtopic_vectors is None:
                        self._offtopic_vectors = await self._embed_in_steps(offtopic_questions())
                    offtopic = self._offtopic_vectors
                    pseudo = await self._embed_in_steps(questions)
                    ungrounded = await self.in_store_thread(lambda: store.top_scores(offtopic))
                    grounded = await self.in_store_thread(lambda: store.top_scores(pseudo))
                    found = calibrate(ungrounded, grounded)
                    self.calibrations[collection] = found
                    log.info("collection %r: grounding threshold %.3f (margin %.3f, %d off-topic, %d pseudo-questions)",
                             collection, found.threshold, found.margin, len(ungrounded), len(grounded))
                if collection not in self._recalibrate:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the default threshold stays in force; say why
            log.warning("cannot calibrate collection %r: %s", collection, getattr(exc, "message", exc))
        finally:
            self._calibrating.pop(collection, None)

    def grounding_report(self) -> dict[str, Any]:
        """The threshold in force per collection, and how it was found (for /api/stats)."""
        s = self.settings
        if s.grounding_threshold is not None:
            return {"source": "setting", "threshold": s.grounding_threshold}
        return {"source": "auto", "default_threshold": s.grounding_threshold_or_default,
                "collections": {name: c.as_dict() for name, c in self.calibrations.items()},
                "calibrating": sorted(self._calibrating)}

    async def collection(self, name: str | None) -> VectorStore:
        """The store over ``name`` (the default collection when None); unknown names are refused."""
        assert self.store is not None
        if name is None or name == self.store.collection:
            return self.store
        store = self.store.with_collection(name)
        if name not in self._known_collections:  # asked once: keystrokes name their collection every time
            if not await self.in_store_thread(store.exists):
                raise BadRequest(f"unknown collection {name!r}; ingest into it first (smallfirst ingest DIR --collection {name})")
            self._known_collections.add(name)
        return store

    async def _grounding_hits(self, query: str, collection: str | None) -> list[Hit]:
        """Passages for autocomplete grounding (embedding at answer priority: never ahead of a keystroke)."""
        return await self.search(await self.embed_query(query), GROUNDING_TOP_K, collection)

    async def search(self, vector: Any, top_k: int, collection: str | None = None) -> list[Hit]:
        store = await self.collection(collection)
        try:
            return await self.in_store_thread(lambda: store.search(vector, top_k))
        except RetrievalUnavailable:
            raise
        except Exception as exc:
            raise RetrievalUnavailable(f"search failed: {exc}") from exc

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for task in list(self._calibrating.values()):
            task.cancel()
        if self.autocomplete is not None:
            await self.autocomplete.close()
        if self.worker is not None:
            await self.worker.close()
        if self.ready and not self.settings.qdrant_url:
            remove_service_file(self.settings)
        if self.large is not None:
            await self.large.close()
        if self.distill is not None:
            await asyncio.to_thread(self.distill.close)
        if self.store is not None:
            store = self.store
            await self.in_store_thread(store.close)
        self._store_thread.shutdown(wait=False)
        self.scheduler.stop()
