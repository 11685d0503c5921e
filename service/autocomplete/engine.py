"""Autocomplete: one slot per typist in a shared llama.cpp context, batched steps, grounding
refreshed in the background.

The keystroke path does no retrieval and no tokenizer work beyond the typed tail: the
request's prompt is the typist's current grounding block (tokenized once) plus the typed
text; the slot already holds all but the last few tokens of it, so the first step evaluates
only those and samples the first suggested token.

One engine loop drives the slots. Each step, built on the scheduler thread, takes
- every new request's remaining prompt tokens (a cold prompt in chunks), then
- one token for each suggestion being continued, up to ``MAX_ROWS`` sampled rows, or
- when no typist waits, a chunk of a standby prefill (new grounding for a typist).
Steps with a new request run at keystroke priority; continuing a suggestion or prefilling a
standby runs at answer priority, so a streaming answer and a typist share the CPU fairly while
a new keystroke always goes first.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from smallfirst.errors import Busy, SmallfirstError, UpstreamError
from smallfirst.retrieval.store import Hit
from smallfirst.service.autocomplete.grounding import Grounder, Grounding, Search, grounding_query
from smallfirst.service.llm.base import GenerationStats
from smallfirst.service.llm.prompts import complete_prompt, complete_window_start
from smallfirst.service.llm.slots import Row, SlotContext
from smallfirst.service.scheduler import CpuScheduler, Priority
from smallfirst.service.autocomplete.suggestion import SuggestionCutter

log = logging.getLogger(__name__)

MAX_ROWS = 4  # sampled rows per step: each adds ~9-13 ms to the step on the reference machine
STEP_TOKENS = 16  # prompt tokens per step while other typists may be waiting
ALONE_STEP_TOKENS = 48  # a cold prompt with nobody else waiting
STANDBY_STEP_TOKENS = 8  # a standby prefill chunk: the longest a new keystroke waits behind it
ACTIVE_S = 2.0  # a typist counts as typing this long after a request
PREWARM_CHARS = 80  # the next text window is prefilled this many characters before the text reaches it


@dataclass(eq=False)
class Job:
    """One suggestion being produced, or (``standby``) a prompt being prefilled into a slot."""

    slot: int
    prompt: list[int]
    standby: bool = False
    release: bool = False  # a prewarm: the slot is free for anyone once it is filled
    cutter: SuggestionCutter | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    prepared: bool = False
    position: int = 0  # prompt tokens in the slot's KV cache
    pending: int | None = None  # the sampled token not yet fed back
    cancelled: bool = False
    finished: bool = False
    error: SmallfirstError | None = None
    started: float = field(default_factory=time.perf_counter)
    first_step_at: float | None = None
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    @property
    def decoding(self) -> bool:
        return self.pending is not None


class Typist:
    """One connection's autocomplete state: its slot, its grounding, and a standby in progress."""

    def __init__(self) -> None:
        self.slot: int | None = None
        self.grounding: Grounding | None = None
        self.standby: Job | None = None
        self.query: tuple[str | None, str] | None = None  # (collection, words) last looked up
        self.wanted: tuple[str, str | None] | None = None
        self.refreshing: asyncio.Task[None] | None = None
        self.job: Job | None = None
        self.used: Grounding | None = None  # the passage in front of the latest request's text
        self.prewarmed: tuple[int, str | None] | None = None  # (window start, passage id) prefilled ahead


class Autocompleter:
    """Serves ``complete`` requests for every connection from one :class:`SlotContext`."""

    def __init__(
        self, slots: SlotContext, scheduler: CpuScheduler, search: Search | None,
        *, context_tokens: int, min_score: float, prefix_reuse: bool = True,
    ) -> None:
        self.ctx = slots
        self._scheduler = scheduler
        self._reuse = prefix_reuse
        self._context_tokens = context_tokens
        self.grounder = Grounder(search, self._grounding, min_score) if search is not None else None
        self._owner: list[Typist | None] = [None] * slots.n_slots
        self._used: list[float] = [0.0] * slots.n_slots
        self._jobs: list[Job] = []
        self._in_flight: dict[Priority, int] = {Priority.KEYSTROKE: 0, Priority.ANSWER: 0}
        self._step_tasks: set[asyncio.Task[None]] = set()
        self._last_request = 0.0
        self.steps = 0

    @classmethod
    async def load(cls, scheduler: CpuScheduler, model_path: Path, n_slots: int, slot_ctx: int, threads: int,
                   search: Search | None, lora_path: Path | None = None, **options: Any) -> "Autocompleter":
        slots = await scheduler.run(
            Priority.CONTROL, lambda: SlotContext(model_path, n_slots, slot_ctx, threads, lora_path=lora_path))
        return cls(slots, scheduler, search, **options)

    # Typists ---------------------------------------------------------------------------

    def typist(self) -> Typist:
        return Typist()

    def release(self, typist: Typist) -> None:
        """A connection closed: its slots become free (their KV stays, for prefix copies)."""
        if typist.standby is not None:
            typist.standby.cancelled = True
        if typist.refreshing is not None:
            typist.refreshing.cancel()
        for slot, owner in enumerate(self._owner):
            if owner is typist:
                self._owner[slot] = None

    @property
    def slots_in_use(self) -> int:
        """Slots a typist owns."""
        return sum(1 for owner in self._owner if owner is not None)

    @property
    def active(self) -> bool:
        """Whether someone typed recently (answers then prefill in smaller steps)."""
        return time.perf_counter() - self._last_request < ACTIVE_S

    def _claim(self, typist: Typist) -> int | None:
        """A slot for ``typist``: a free one, else the least recently used one not working now."""
        busy = {job.slot for job in self._jobs}
        free = [s for s in range(self.ctx.n_slots) if s not in busy and self._owner[s] is None]
        if not free:
            free = [s for s in range(self.ctx.n_slots) if s not in busy and self._owner[s] is not typist]
        if not free:
            return None
        slot = min(free, key=lambda s: self._used[s])
        previous = self._owner[slot]
        if previous is not None and previous is not typist:  # evicted: it starts cold next time
            if previous.slot == slot:
                previous.slot = None
            if previous.standby is not None and previous.standby.slot == slot:
                previous.standby.cancelled = True
        self._owner[slot] = typist
        self._used[slot] = time.perf_counter()
        return slot

    # Prompts ---------------------------------------------------------------------------

    def _grounding(self, hit: Hit) -> Grounding:
        words = " ".join(hit.text.split())
        tokens = self.ctx.tokenize(words, add_bos=False)[: self._context_tokens]
        block = self.ctx.text(tokens) + "\n\n"
        return Grounding(hit.id, hit.doc_id, hit.title, hit.chunk_index, block,
                         tuple(self.ctx.tokenize(block, add_bos=True)))

    def prompt_tokens(self, grounding: Grounding | None, text: str, max_tokens: int) -> list[int]:
        return self._tokens(grounding, complete_prompt(text), max_tokens)

    def _tokens(self, grounding: Grounding | None, tail: str, max_tokens: int) -> list[int]:
        head = list(grounding.tokens) if grounding is not None else []
        body = self.ctx.tokenize(tail, add_bos=not head)
        room = self.ctx.slot_ctx - max_tokens - 8 - len(head)
        if len(body) > room:
            body = body[len(body) - room:]
        return head + body

    # Requests --------------------------------------------------------------------------

    async def suggest(
        self, typist: Typist, text: str, max_tokens: int, stats: GenerationStats,
        collection: str | None = None,
    ) -> AsyncIterator[str]:
        """Stream a suggestion for ``text``; cancelling the caller stops it before the next step."""
        self._last_request = time.perf_counter()
        if typist.job is not None:
            typist.job.cancelled = True
        if self.grounder is not None:
            if self._reuse:
                self._refresh_later(typist, text, collection)
            else:  # the baseline: retrieve on the keystroke path, no cache
                query = grounding_query(text)
                if query is not None:
                    typist.grounding = await self.grounder.choose(query, collection, typist.grounding, cached=False)
        if typist.slot is None or self._owner[typist.slot] is not typist:
            typist.slot = self._claim(typist)
            if typist.slot is None:
                raise Busy("every autocomplete slot is busy; try again shortly")
        typist.used = typist.grounding
        job = Job(typist.slot, self.prompt_tokens(typist.grounding, text, max_tokens), stats=stats,
                  cutter=SuggestionCutter(text, max_tokens))
        typist.job = job
        self._used[job.slot] = time.perf_counter()
        self._submit(job)
        if self._reuse:
            self._prewarm(typist, text)
        try:
            while True:
                piece = await job.queue.get()
                if piece is None:
                    break
                yield piece
            if job.error is not None:
                raise job.error
        finally:
            job.cancelled = True
            if typist.job is job:
                typist.job = None

    def _submit(self, job: Job) -> None:
        self._jobs.append(job)
        self._kick()

    def _prewarm(self, typist: Typist, text: str) -> None:
        """When the text is about to outgrow its window (whose start then jumps ahead), prefill
        the next window into a spare slot; the keystroke that crosses copies it over."""
        soon = complete_window_start(len(text) + PREWARM_CHARS)
        passage = typist.grounding.id if typist.grounding is not None else None
        if soon == complete_window_start(len(text)) or typist.prewarmed == (soon, passage):
            return
        typist.prewarmed = (soon, passage)
        slot = self._claim(typist)
        if slot is not None:
            self._submit(Job(slot, self._tokens(typist.grounding, text[soon:], 16), standby=True, release=True))

    # Grounding in the background -------------------------------------------------------

    def _refresh_later(self, typist: Typist, text: str, collection: str | None) -> None:
        query = grounding_query(text)
        if query is None or (collection, query) == typist.query:
            return
        typist.wanted = (text, collection)
        if typist.refreshing is None or typist.refreshing.done():
            typist.refreshing = asyncio.get_running_loop().create_task(self._refresh(typist))

    async def _refresh(self, typist: Typist) -> None:
        """Look the typed words up; when the passage changes, prefill it into a standby slot and
        switch the typist over once it is ready (the current slot serves meanwhile)."""
        assert self.grounder is not None
        try:
            while typist.wanted is not None:
                text, collection = typist.wanted
                typist.wanted = None
                query = grounding_query(text)
                if query is None or (collection, query) == typist.query:
                    continue
                typist.query = (collection, query)
                chosen = await self.grounder.choose(query, collection, typist.grounding)
                if chosen is None or chosen == typist.grounding:
                    continue
                slot = self._claim(typist)
                if slot is None:
                    continue
                latest = typist.wanted[0] if typist.wanted else text
                standby = Job(slot, self.prompt_tokens(chosen, latest, 16), standby=True)
                typist.standby = standby
                self._submit(standby)
                while not standby.finished:
                    await standby.queue.get()
                typist.standby = None
                if standby.cancelled or standby.error is not None or self._owner[slot] is not typist:
                    if self._owner[slot] is typist and slot != typist.slot:
                        self._owner[slot] = None
                    continue
                old = typist.slot
                typist.slot, typist.grounding = slot, chosen
                if old is not None and old != slot and self._owner[old] is typist:
                    self._owner[old] = None
        except asyncio.CancelledError:
            raise
        except SmallfirstError as exc:  # retrieval down: keep completing with the grounding we have
            log.warning("autocomplete grounding failed: %s", exc.message)
        except Exception:
            log.exception("autocomplete grounding failed")

    # Driving the steps -----------------------------------------------------------------

    def _kick(self) -> None:
        """Queue the step the current jobs need. A new keystroke gets its own keystroke-priority
        step at once, even while a less urgent step waits in the scheduler: steps plan their rows
        when they start, from the jobs live then, so neither waits for the other's plan."""
        for job in self._jobs:
            if job.cancelled and not job.finished:
                job.stats.finish = "cancelled"
                self._finish(job)
        self._jobs = [job for job in self._jobs if not job.finished]
        if not self._jobs:
            return
        urgent = any(not job.standby and not job.decoding for job in self._jobs)
        if urgent and not self._in_flight[Priority.KEYSTROKE]:
            self._launch(Priority.KEYSTROKE)
        elif not urgent and not any(self._in_flight.values()):
            self._launch(Priority.ANSWER)

    def _launch(self, priority: Priority) -> None:
        self._in_flight[priority] += 1
        task = asyncio.get_running_loop().create_task(self._run_step(priority))
        self._step_tasks.add(task)
        task.add_done_callback(self._step_tasks.discard)

    async def _run_step(self, priority: Priority) -> None:
        try:
            results = await self._scheduler.run(priority, self._step)
        except SmallfirstError as exc:
            self._fail_all(exc)
        except Exception as exc:  # anything a step raises fails its requests, never the engine
            log.exception("autocomplete step failed")
            self._fail_all(UpstreamError(f"autocomplete failed: {exc}"))
        else:
            for job, piece, end in results:
                self._deliver(job, piece, end)
        finally:
            self._in_flight[priority] -= 1
            self._kick()

    def _fail_all(self, error: SmallfirstError) -> None:
        for job in self._jobs:
            self._finish(job, error)

    def _finish(self, job: Job, error: SmallfirstError | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        job.error = error
        job.queue.put_nowait(None)
        if job.release:
            self._owner[job.slot] = None

    def _deliver(self, job: Job, piece: bytes | None, end: bool) -> None:
        """Turn one step's outcome for ``job`` into suggestion text (on the event loop)."""
        if job.finished or job.cancelled:
            return
        if job.standby or piece is None:  # a standby filled, or the model's end-of-text
            if end:
                job.stats.finish = "stop"
                self._finish(job)
            return
        assert job.cutter is not None
        if job.stats.completion_tokens == 0:
            job.stats.prefill_ms = (time.perf_counter() - job.started) * 1000
        job.stats.completion_tokens += 1
        text, stop = job.cutter.feed(job.decoder.decode(piece))
        if text:
            job.queue.put_nowait(text)
        if stop or end:
            job.stats.finish = job.cutter.finish if stop else "stop"
            self._finish(job)

    # One step, on the scheduler thread ---------------------------------------------------

    def _prepare(self, job: Job) -> None:
        if self._reuse:
            candidates = range(self.ctx.n_slots)
            job.position = self.ctx.adopt(job.slot, job.prompt, candidates)
        else:
            self.ctx.clear(job.slot)
            job.position = 0
        job.stats.prompt_tokens = len(job.prompt)
        job.stats.cached_tokens = job.position
        job.prepared = True

    def _step(self) -> list[tuple[Job, bytes | None, bool]]:
        began = time.perf_counter()
        jobs = [job for job in list(self._jobs) if not job.cancelled and not job.finished]
        rows: list[Row] = []
        planned: list[Job] = []
        fresh = [j for j in jobs if not j.standby and not j.decoding]
        budget = ALONE_STEP_TOKENS if len(jobs) == 1 else STEP_TOKENS
        sampled_rows = 0
        for job in fresh:
            if budget <= 0 or sampled_rows >= MAX_ROWS:
                break
            if not job.prepared:
                self._prepare(job)
            remaining = job.prompt[job.position:]
            take = remaining[:budget]
            sample = len(take) == len(remaining)
            rows.append(Row(job.slot, take, sample))
            planned.append(job)
            budget -= len(take)
            sampled_rows += sample
        for job in jobs:
            if job.decoding and sampled_rows < MAX_ROWS:
                assert job.pending is not None
                rows.append(Row(job.slot, [job.pending], True))
                planned.append(job)
                sampled_rows += 1
        if not rows:
            for job in jobs:
                if job.standby:
                    if not job.prepared:
                        self._prepare(job)
                    take = job.prompt[job.position: min(job.position + STANDBY_STEP_TOKENS, len(job.prompt) - 1)]
                    if take:
                        rows.append(Row(job.slot, take, False))
                        planned.append(job)
                    else:
                        return [(job, None, True)]
                    break
        if not rows:
            return []
        self.steps += 1
        sampled = self.ctx.decode(rows)
        took_ms = (time.perf_counter() - began) * 1000
        results: list[tuple[Job, bytes | None, bool]] = []
        for job, row, token in zip(planned, rows, sampled):
            if job.first_step_at is None:
                job.first_step_at = began
                job.stats.queue_ms = (began - job.started) * 1000
            if not job.decoding and token is not None:
                job.stats.step_ms = took_ms
            if not job.decoding:
                job.position += len(row.tokens)
            if job.standby:
                results.append((job, None, job.position >= len(job.prompt) - 1))
                continue
            if token is None:
                continue
            if self.ctx.is_end(token):
                job.pending = None
                results.append((job, None, True))
            else:
                job.pending = token
                results.append((job, self.ctx.piece(token), False))
        return results

    async def close(self) -> None:
        for task in list(self._step_tasks):
            task.cancel()
        for job in list(self._jobs):
            self._finish(job)
