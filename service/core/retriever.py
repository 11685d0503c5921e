"""Retrieval as the service runs it: query vectors, search per collection, context and evidence.

Embedding and context assembly run on the CPU scheduler. Every store call runs on the one thread
that opened the store: qdrant-client's embedded store keeps a SQLite connection bound to it.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from smallfirst.errors import BadRequest, RetrievalUnavailable
from smallfirst.retrieval.context import Context, assemble_context
from smallfirst.retrieval.embedder import Embedder
from smallfirst.retrieval.answer_evidence import answer_evidence
from smallfirst.retrieval.evidence import EvidenceSet
from smallfirst.retrieval.store import Hit, VectorStore
from smallfirst.service.autocomplete.grounding import Lookup
from smallfirst.service.llm.loading import Tokenizer
from smallfirst.service.scheduler import CpuScheduler, Priority
from smallfirst.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

GROUNDING_TOP_K = 8  # the best is the grounding passage; all of them are copied from (autocomplete/copying.py)
PHRASE_HITS = 8  # passages holding the last words typed, copied from too
STORE_OPEN_ATTEMPTS = 6  # a Qdrant server: 1 + 2 + 4 + 8 + 8 s of backoff before giving up
EMBED_STEP = 16  # texts embedded per scheduler step in bulk (a keystroke waits at most one step)


async def on_thread(executor: Executor, fn: Callable[[], T]) -> T:
    """Run ``fn`` on ``executor`` and wait for it from the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn)


async def open_store(settings: Settings, dimension: int, store_thread: Executor) -> VectorStore:
    """Open the store on ``store_thread``. A Qdrant server gets a few tries with backoff: in a deployment
    it may still be starting, and replicas starting together may race to create the same collection
    (the loser's next try finds it)."""
    s = settings
    attempts = STORE_OPEN_ATTEMPTS if s.qdrant_url else 1
    for attempt in range(1, attempts + 1):
        try:
            return await on_thread(store_thread, lambda: VectorStore.open(
                s.collection, dimension, path=s.qdrant_path, url=s.qdrant_url, api_key=s.qdrant_api_key))
        except RetrievalUnavailable as exc:
            if attempt == attempts:
                raise
            delay = min(2.0 ** (attempt - 1), 8.0)
            log.warning("Qdrant at %s is not usable yet (%s); try %d of %d in %.0f s",
                        s.qdrant_url, exc.message, attempt + 1, attempts, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class Retriever:
    """The embedder, the store (default collection) and the small model's tokenizer, used from the event loop."""

    def __init__(self, settings: Settings, scheduler: CpuScheduler, store_thread: Executor, embedder: Embedder,
                 tokenizer: Tokenizer, store: VectorStore) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.store = store
        self._store_thread = store_thread
        self._known_collections: set[str] = set()

    async def in_store_thread(self, fn: Callable[[], T]) -> T:
        return await on_thread(self._store_thread, fn)

    async def embed_query(self, text: str) -> Any:
        """The query vector: from the cache on the loop, else computed on the scheduler."""
        found = self.embedder.cached(text)
        if found is not None:
            return found
        return await self.scheduler.run(Priority.ANSWER, self.embedder.embed_query, text)

    async def embed_in_steps(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for many texts, a few per scheduler step at ingest priority."""
        embedder = self.embedder
        parts = [await self.scheduler.run(Priority.INGEST, embedder.embed_documents, list(texts[i:i + EMBED_STEP]))
                 for i in range(0, len(texts), EMBED_STEP)]
        return np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)

    async def ground(self, question: str, hits: Sequence[Hit]) -> tuple[Context, EvidenceSet]:
        """The hits as numbered sources, with the whole chunks that fit the large tier's budget
        (counted in the small model's tokens), and every sentence of the sources scored for the
        question: one short scheduler step."""
        s, count, vectors = self.settings, self.tokenizer.count, self.embedder.token_vectors

        def work() -> tuple[Context, EvidenceSet]:
            context = assemble_context(hits, s.context_tokens, count, s.min_score)
            return context, answer_evidence(question, context.sources, vectors)

        return await self.scheduler.run(Priority.ANSWER, work)

    async def count_tokens(self, text: str) -> int:
        """Small-model tokens in ``text`` (the large tier's usage, when its server reports none)."""
        return await self.scheduler.run(Priority.ANSWER, self.tokenizer.count, text)

    async def collection(self, name: str | None) -> VectorStore:
        """The store over ``name`` (the default collection when None); unknown names are refused."""
        if name is None or name == self.store.collection:
            return self.store
        store = self.store.with_collection(name)
        if name not in self._known_collections:  # asked once: keystrokes name their collection every time
            if not await self.in_store_thread(store.exists):
                raise BadRequest(f"unknown collection {name!r}; ingest into it first (smallfirst ingest DIR --collection {name})")
            self._known_collections.add(name)
        return store

    async def search(self, vector: Any, top_k: int, collection: str | None = None) -> list[Hit]:
        store = await self.collection(collection)
        try:
            return await self.in_store_thread(lambda: store.search(vector, top_k))
        except RetrievalUnavailable:
            raise
        except Exception as exc:
            raise RetrievalUnavailable(f"search failed: {exc}") from exc

    async def grounding_lookup(self, query: str, collection: str | None) -> Lookup:
        """Passages for autocomplete: those nearest the typed words (the best grounds the model;
        embedding at answer priority, never ahead of a keystroke) and those holding their last
        words (copied from), in one store call."""
        vector = await self.embed_query(query)
        store = await self.collection(collection)
        try:
            hits, phrases = await self.in_store_thread(
                lambda: (store.search(vector, GROUNDING_TOP_K), store.phrase_hits(query, PHRASE_HITS)))
        except RetrievalUnavailable:
            raise
        except Exception as exc:
            raise RetrievalUnavailable(f"search failed: {exc}") from exc
        return Lookup(hits, phrases)
