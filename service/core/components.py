"""Everything requests are served with, loaded in one go: store, embedder, models, worker."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from smallfirst.retrieval.answer_check import PICK_MODEL_FILE, PickModel
from smallfirst.retrieval.classifier import HardQueryClassifier
from smallfirst.retrieval.shapes import SHAPE_MODEL_FILE, ShapeModel
from smallfirst.retrieval.embedder import Embedder
from smallfirst.service.autocomplete.engine import Autocompleter
from smallfirst.service.distill.adapter import Adapter, load_adapter
from smallfirst.service.distill.log import DistillLog
from smallfirst.service.llm.breaker import CircuitBreaker
from smallfirst.service.llm.keystroke_model import keystroke_model
from smallfirst.service.llm.local import LocalBackend
from smallfirst.service.llm.loading import Tokenizer
from smallfirst.service.llm.remote import RemoteBackend
from smallfirst.service.scheduler import CpuScheduler, Priority
from smallfirst.service.core.thresholds import Calibrator
from smallfirst.service.core.retriever import Retriever, on_thread, open_store
from smallfirst.service.core.service_file import remove_service_file, write_service_file
from smallfirst.service.core.stats import Stats
from smallfirst.service.core.ingest_worker import IngestWorker
from smallfirst.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Components:
    """The loaded service. Only what the configuration leaves out is None: the adapter, the large
    tier and the distillation log; and the question-shape and pick models until their data
    is fitted (bench/train_answer_models.py), when answers are checked by the rules alone."""

    settings: Settings
    model_path: Path
    keystroke_model_path: Path  # model_path, or its copy with a narrow output layer
    stats: Stats
    retriever: Retriever  # the embedder, the store and the small model's tokenizer
    autocomplete: Autocompleter
    answer_model: LocalBackend
    classifier: HardQueryClassifier
    shapes: ShapeModel | None
    pick_model: PickModel | None
    calibrator: Calibrator
    worker: IngestWorker
    adapter: Adapter | None
    large: RemoteBackend | None
    distill: DistillLog | None
    _closing: AsyncExitStack = field(repr=False, compare=False)

    @property
    def model_name(self) -> str:
        return self.model_path.name

    @classmethod
    async def load(cls, settings: Settings, scheduler: CpuScheduler, stats: Stats, model_path: Path) -> "Components":
        """Load every part in order, then start the ingest worker and the default collection's
        calibration. A failure (or cancellation) part way closes what was loaded, then propagates."""
        s = settings
        async with AsyncExitStack() as stack:
            # qdrant-client's embedded store keeps a SQLite connection bound to the thread that opened it.
            store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smallfirst-store")
            stack.callback(store_thread.shutdown, wait=False)
            adapter = None
            if s.adapter_path is not None:
                adapter = await asyncio.to_thread(load_adapter, s.adapter_path, model_path)
            answer_lora = adapter.path if adapter is not None else None
            threads = s.model_threads
            embedder = await scheduler.run(
                Priority.CONTROL, lambda: Embedder(s.embed_model, s.query_cache_size, threads, s.embed_backend, s.embed_cache_dir)
            )
            store = await open_store(s, embedder.dimension, store_thread)
            stack.push_async_callback(on_thread, store_thread, store.close)
            tokenizer = await scheduler.run(Priority.CONTROL, Tokenizer, model_path)
            retriever = Retriever(s, scheduler, store_thread, embedder, tokenizer, store)
            keystrokes = await asyncio.to_thread(_keystroke_model, model_path) if s.complete_fast_output else model_path
            autocomplete = await Autocompleter.load(
                scheduler, keystrokes, s.complete_slots, s.complete_ctx, threads,
                retriever.grounding_lookup if s.complete_grounding else None,
                context_tokens=s.complete_context_tokens, min_score=s.min_score, prefix_reuse=s.complete_prefix_reuse,
                copying=s.complete_copy,
                lora_path=answer_lora if s.complete_adapter else None,
            )
            stack.push_async_callback(autocomplete.close)
            answer_model = await LocalBackend.load(
                "small", model_path, s.answer_ctx, threads, scheduler, Priority.ANSWER,
                prefill_step=s.prefill_step_tokens, queue_limit=s.answer_queue_limit,
                prefix_cache_bytes=int(s.answer_kv_cache_mb * 1024 * 1024), lora_path=answer_lora,
                yield_to=lambda: autocomplete.active,  # answers prefill in short steps while someone types
                assemble=s.answer_assemble_passages,
            )
            classifier = HardQueryClassifier.load()
            shapes = ShapeModel.load() if SHAPE_MODEL_FILE.exists() else None
            pick_model = PickModel.load() if s.answer_learned_check and PICK_MODEL_FILE.exists() else None
            large = _large_tier(s, s.large_url, retriever.count_tokens) if s.large_url else None
            if large is not None:
                stack.push_async_callback(large.close)
            distill = None
            if s.distill_log is not None:
                distill = DistillLog(s.distill_log, s.distill_max_bytes, s.distill_backups)
                stack.push_async_callback(asyncio.to_thread, distill.close)
            calibrator = Calibrator(s, retriever)
            worker = IngestWorker(s, scheduler, embedder, store, store_thread, on_job_done=calibrator.schedule)
            stack.push_async_callback(worker.close)
            stack.callback(calibrator.close)
            if not s.qdrant_url:  # the ingest CLI hands its jobs to this service from now on
                write_service_file(s)
                stack.callback(remove_service_file, s)
            components = cls(
                settings=s, model_path=model_path, keystroke_model_path=keystrokes, stats=stats, retriever=retriever,
                autocomplete=autocomplete,
                answer_model=answer_model, classifier=classifier, shapes=shapes, pick_model=pick_model, calibrator=calibrator, worker=worker,
                adapter=adapter, large=large, distill=distill, _closing=stack.pop_all(),
            )
        calibrator.schedule(s.collection)
        return components

    async def close(self) -> None:
        """Stop the background work and release every part, in the reverse order of loading."""
        await self._closing.aclose()


def _keystroke_model(model_path: Path) -> Path:
    """The model file keystrokes run on: its copy with a narrow output layer (see
    :mod:`~smallfirst.service.llm.keystroke_model`), or the file itself when the copy cannot be made."""
    try:
        path = keystroke_model(model_path)
    except Exception as exc:  # the copy only saves time: whatever stops it, keystrokes run on the file itself
        log.warning("keystrokes use %s as it is: its copy with a narrow output layer cannot be made: %s",
                    model_path, exc)
        return model_path
    if path != model_path:
        log.info("keystrokes use %s, a copy of %s with a Q4_0 output layer", path, model_path.name)
    return path


def _large_tier(s: Settings, url: str, count_tokens: Callable[[str], Awaitable[int]]) -> RemoteBackend:
    """The OpenAI-compatible large tier at ``url``, behind its circuit breaker."""
    return RemoteBackend(
        url, s.large_model, s.large_api_key, connect_timeout_s=s.large_connect_timeout_s,
        first_token_timeout_s=s.large_first_token_timeout_s, token_timeout_s=s.large_token_timeout_s,
        total_timeout_s=s.large_total_timeout_s, retries=s.large_retries,
        breaker=CircuitBreaker(s.breaker_failures, s.breaker_reset_s), count_tokens=count_tokens,
    )
