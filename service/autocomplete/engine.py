"""Autocomplete: one slot per typist in a shared llama.cpp context, batched steps, grounding
refreshed in the background.

The keystroke path does no retrieval: the request's prompt is the typist's current grounding
block (tokenized once, when it was chosen) plus the typed text; the slot already holds all but
the last few tokens of it, so the first step evaluates only those and samples the first
suggested token.

This module is the event-loop side. It owns every job and typist, asks the pure planner
(:mod:`~smallfirst.service.autocomplete.planner`) what the next step evaluates, and sends the
plan to the scheduler thread as a message; :class:`~smallfirst.service.autocomplete.runner.SlotRunner`
tokenizes, decodes and samples there and answers through the step's future. Slot ownership is
:mod:`~smallfirst.service.autocomplete.ownership`'s, keeping the grounding passage current is
:mod:`~smallfirst.service.autocomplete.refresh`'s, and what of the output becomes a suggestion is
:mod:`~smallfirst.service.autocomplete.suggestion`'s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator

from smallfirst.errors import Busy, SmallfirstError, UpstreamError
from smallfirst.retrieval.store import Hit
from smallfirst.service.autocomplete.copying import copied
from smallfirst.service.autocomplete.grounding import Grounder, Grounding, Search, grounding_query
from smallfirst.service.autocomplete.ownership import SlotOwners
from smallfirst.service.autocomplete.planner import Limits, Plan, PlannedRow, next_step
from smallfirst.service.autocomplete.refresh import GroundingRefresh
from smallfirst.service.autocomplete.runner import Prepared, PrepareRequest, RowResult, SlotRunner, StepResult
from smallfirst.service.autocomplete.suggestion import SuggestionCutter
from smallfirst.service.autocomplete.typist import Job, Typist
from smallfirst.service.llm.base import GenerationStats
from smallfirst.service.llm.prompts import complete_prompt, complete_window_start
from smallfirst.service.llm.slots import SlotContext
from smallfirst.service.scheduler import CpuScheduler, Priority

log = logging.getLogger(__name__)

ACTIVE_S = 2.0  # a typist counts as typing this long after a request
PREWARM_CHARS = 80  # the next text window is prefilled this many characters before the text reaches it
STANDBY_RESERVE = 16  # tokens a standby prefill keeps free for the suggestion


class Autocompleter:
    """Serves ``complete`` requests for every connection from one :class:`SlotContext`."""

    def __init__(
        self, runner: SlotRunner, n_slots: int, scheduler: CpuScheduler, search: Search | None,
        *, context_tokens: int, min_score: float, prefix_reuse: bool = True, limits: Limits = Limits(),
        copying: bool = True,
    ) -> None:
        self._runner = runner
        self._scheduler = scheduler
        self._reuse = prefix_reuse
        self._context_tokens = context_tokens
        self._limits = limits
        self.owners = SlotOwners(n_slots)
        self.grounder = Grounder(search, min_score) if search is not None else None
        self._refresh = GroundingRefresh(self.grounder, self._grounding, self._standby, self.owners) if self.grounder else None
        self._jobs: list[Job] = []
        self._keys = itertools.count()
        self._in_flight: dict[Priority, int] = {Priority.KEYSTROKE: 0, Priority.ANSWER: 0}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_request = 0.0
        self._copying = copying
        self.copies = 0  # suggestions copied from a passage, with no model step
        self.dropped: Counter[str] = Counter()  # suggestions cut as junk, by reason (see junk.py)
        self.steps = 0  # model steps that evaluated at least one row
        self.evaluated = 0  # tokens those steps evaluated
        self.reused = 0  # suggestions whose first token came from the scores a slot kept, with no step
        self.preempted = 0  # background prefills stopped to free a slot for a keystroke

    @classmethod
    async def load(cls, scheduler: CpuScheduler, model_path: Path, n_slots: int, slot_ctx: int, threads: int,
                   search: Search | None, lora_path: Path | None = None, **options: Any) -> "Autocompleter":
        """Create the slot context on the scheduler thread, which then owns it."""
        runner = await scheduler.run(
            Priority.CONTROL, lambda: SlotRunner(SlotContext(model_path, n_slots, slot_ctx, threads, lora_path=lora_path)))
        return cls(runner, n_slots, scheduler, search, **options)

    # Typists ---------------------------------------------------------------------------

    def typist(self) -> Typist:
        return Typist()

    def release(self, typist: Typist) -> None:
        """A connection closed: its slots become free (their KV stays, for prefix copies)."""
        if typist.standby is not None:
            typist.standby.cancelled = True
        if typist.refreshing is not None:
            typist.refreshing.cancel()
        self.owners.release(typist)

    @property
    def slots_in_use(self) -> int:
        """Slots a typist owns."""
        return self.owners.in_use

    @property
    def active(self) -> bool:
        """Whether someone typed recently (answers then prefill in smaller steps)."""
        return time.perf_counter() - self._last_request < ACTIVE_S

    async def idle(self) -> None:
        """Wait until no job is left: every suggestion and standby prefill done."""
        await self._idle.wait()

    def _claim(self, typist: Typist) -> int | None:
        return self.owners.claim(typist, {job.slot for job in self._jobs})

    def _preempt(self, typist: Typist) -> int | None:
        """Every slot holds a running job: a keystroke goes before a prepared background prefill,
        whose slot it takes, the one that has done least (prefills advance one at a time, oldest
        first): one whose typist has gone, else a prewarm, else one not in a step now, else the
        newest. None when no prepared prefill holds a slot."""
        prefills = [job for job in self._jobs if job.standby and job.prompt is not None and not job.finished]
        if not prefills:
            return None
        job = min(prefills, key=lambda job: (not job.cancelled, not job.release, job.busy, -job.started))
        owner = self.owners.owner(job.slot)
        if job.release and owner is not None:
            owner.prewarmed = None  # its next keystroke may prefill that window again
        job.cancelled = True
        job.stats.finish = "cancelled"
        self._finish(job)
        self._jobs.remove(job)
        self.preempted += 1
        return self.owners.take(typist, job.slot)

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
                assert self._refresh is not None
                if self._copying and not typist.queries:
                    await self._first_lookup(typist, text, collection)
                self._refresh.later(typist, text, collection)
            else:  # the baseline: retrieve on the keystroke path, no cache
                query = grounding_query(text)
                if query is not None:
                    hit = await self.grounder.pick(query, collection, typist.grounding, cached=False)
                    if hit is not None:
                        typist.grounding = await self._grounding(hit, Priority.KEYSTROKE)
        copy = self._copy(typist, text, max_tokens, stats)
        if copy is not None:
            yield copy
            return
        slot = typist.slot if self.owners.owns(typist, typist.slot) else self._claim(typist)
        if slot is None:
            slot = self._preempt(typist)
        typist.slot = slot
        if slot is None:
            raise Busy("every autocomplete slot is busy; try again shortly")
        typist.used = typist.grounding
        typist.copied_from = None
        job = self._job(slot, typist.grounding, complete_prompt(text), max_tokens,
                        stats=stats, cutter=SuggestionCutter(text, max_tokens, typist.grounding.block if typist.grounding else ""))
        typist.job = job
        self.owners.touch(job.slot)
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
            if not job.finished:
                job.cancelled = True
                self._kick()
            if typist.job is job:
                typist.job = None

    async def _first_lookup(self, typist: Typist, text: str, collection: str | None) -> None:
        """A typist's first request with words enough to look up: its passages are found now, on
        this request's path, so that text pasted or typed before the connection opened can be
        copied from at once (later lookups run off the keystroke path); the refresh that follows
        finds them cached. A failed lookup only leaves the suggestion to the model."""
        assert self.grounder is not None
        query = grounding_query(text)
        if query is None:
            return
        try:
            await self.grounder.lookup(query, collection)
        except SmallfirstError as exc:
            log.warning("autocomplete lookup failed: %s", exc.message)
            return
        typist.queries.append((collection, query))

    def _copy(self, typist: Typist, text: str, max_tokens: int, stats: GenerationStats) -> str | None:
        """The suggestion copied from a document passage (see :mod:`~smallfirst.service.autocomplete.copying`):
        the typist's grounding passage, or one of the hits of its last few lookups. None where the
        last words typed stand in none of them; the model continues then."""
        if not self._copying:
            return None
        sources = [(typist.grounding.passage, typist.grounding.describe())] if typist.grounding is not None else []
        if self.grounder is not None:
            seen = set()
            for query in reversed(typist.queries):  # the newest lookup's hits first
                for hit in self.grounder.cached(query).passages():
                    if hit.id not in seen:
                        seen.add(hit.id)
                        sources.append((hit.text, {"doc_id": hit.doc_id, "title": hit.title,
                                                   "chunk_index": hit.chunk_index}))
        match = copied(text, [passage for passage, _ in sources])
        if match is None:
            return None
        index, found = match
        started = time.perf_counter()
        cutter = SuggestionCutter(text, max_tokens, junk=False)
        out = ""
        for piece in re.findall(r"\s*\S+", found):
            sent, stop = cutter.feed(piece)
            out += sent
            if stop:
                break
        else:
            out += cutter.close()
        if not out.strip():  # nothing survived the cutter (it only repeated the typed text): the model goes on
            return None
        self.copies += 1
        typist.copied_from = sources[index][1]
        stats.finish = cutter.finish
        stats.prefill_ms = (time.perf_counter() - started) * 1000
        return out

    def _job(self, slot: int, grounding: Grounding | None, tail: str, reserve: int, **fields: Any) -> Job:
        head = grounding.tokens if grounding is not None else ()
        return Job(next(self._keys), slot, PrepareRequest(slot, head, tail, reserve, self._reuse), **fields)

    def _submit(self, job: Job) -> None:
        self._jobs.append(job)
        self._idle.clear()
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
            self._submit(self._job(slot, typist.grounding, text[soon:], STANDBY_RESERVE, standby=True, release=True))

    # Grounding ---------------------------------------------------------------------------

    def _standby(self, typist: Typist, grounding: Grounding, text: str) -> Job | None:
        """Prefill ``grounding`` and ``text`` into a spare slot for ``typist``; None when none is free."""
        slot = self._claim(typist)
        if slot is None:
            return None
        job = self._job(slot, grounding, complete_prompt(text), STANDBY_RESERVE, standby=True)
        self._submit(job)
        return job

    async def _grounding(self, hit: Hit, priority: Priority) -> Grounding:
        """The passage cut to the context budget and tokenized (on the scheduler thread)."""
        block, tokens = await self._scheduler.run(priority, self._runner.grounding_block, hit.text, self._context_tokens)
        return Grounding(hit.id, hit.doc_id, hit.title, hit.chunk_index, block, tokens, hit.text)

    # Driving the steps -----------------------------------------------------------------

    def _kick(self) -> None:
        """Prepare new jobs, and launch the step the planner asks for, if any."""
        for job in self._jobs:
            if job.cancelled and not job.finished:
                job.stats.finish = "cancelled"
                self._finish(job)
        self._jobs = [job for job in self._jobs if not job.finished]
        for job in self._jobs:
            if job.prompt is None and not job.busy:
                job.busy = True  # marked now, not when the task starts: a second kick must not plan it again
                self._launch(self._prepare(job))
        while True:
            ready = [job.view() for job in self._jobs if job.prompt is not None and not job.busy]
            in_flight = frozenset(priority for priority, count in self._in_flight.items() if count)
            plan = next_step(ready, len(self._jobs), in_flight, self._limits)
            if plan is None:
                break
            if plan.rows:
                jobs = self._claim_jobs(plan)
                self._in_flight[plan.priority] += 1
                self._launch(self._step(plan, jobs))
                break
            for key in plan.filled:  # a standby whose prompt was already in the slot
                self._finish_key(key, "stop")
            self._jobs = [job for job in self._jobs if not job.finished]
        if not self._jobs and not any(self._in_flight.values()):
            self._idle.set()

    def _launch(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _claim_jobs(self, plan: Plan) -> list[Job]:
        """The jobs of ``plan``'s rows, marked busy until the step is done."""
        by_key = {job.key: job for job in self._jobs}
        jobs = [by_key[row.key] for row in plan.rows]
        for job in jobs:
            job.busy = True
        return jobs

    async def _prepare(self, job: Job) -> None:
        priority = Priority.ANSWER if job.standby else Priority.KEYSTROKE
        try:
            prepared: Prepared = await self._scheduler.run(priority, self._runner.prepare, job.request)
        except SmallfirstError as exc:
            self._finish(job, exc)
        except Exception as exc:  # a failed prepare fails its request, never the engine
            log.exception("autocomplete prepare failed")
            self._finish(job, UpstreamError(f"autocomplete failed: {exc}"))
        else:
            if job.stats.prompt_tokens == 0:
                job.stats.prompt_tokens, job.stats.cached_tokens = len(prepared.tokens), prepared.position
            job.prompt, job.position, job.epoch, job.pending = prepared.tokens, prepared.position, prepared.epoch, None
            job.heal = prepared.heal
            if prepared.first is not None and not job.standby and not (job.finished or job.cancelled):
                self.reused += 1
                job.first_step_at = job.first_step_at or time.perf_counter()
                job.stats.queue_ms = (job.first_step_at - job.started) * 1000
                job.sample_ms = 0.0  # sampled from the kept scores: no step
                self._sampled(job, prepared.first)
        finally:
            job.busy = False
            self._kick()

    async def _step(self, plan: Plan, jobs: list[Job]) -> None:
        try:
            result: StepResult = await self._scheduler.run(plan.priority, self._runner.step, plan.rows)
        except SmallfirstError as exc:
            self._fail_all(exc)
        except Exception as exc:  # anything a step raises fails its requests, never the engine
            log.exception("autocomplete step failed")
            self._fail_all(UpstreamError(f"autocomplete failed: {exc}"))
        else:
            if any(outcome.applied for outcome in result.rows):
                self.steps += 1
            for job, row, outcome in zip(jobs, plan.rows, result.rows):
                self._apply(job, row, outcome, result)
        finally:
            for job in jobs:
                job.busy = False
            self._in_flight[plan.priority] -= 1
            self._kick()

    def _apply(self, job: Job, row: PlannedRow, outcome: RowResult, step: StepResult) -> None:
        """One row's outcome, turned into job state and suggestion text."""
        if not outcome.applied:  # the slot changed under the plan (a superseded job's row, skipped)
            if not (job.finished or job.cancelled):
                if job.pending is None:
                    job.prompt = None  # still prefilling: prepare the prompt again
                else:
                    self._finish(job, UpstreamError("the autocomplete slot changed under a suggestion"))
            return
        self.evaluated += len(row.tokens)
        if job.finished or job.cancelled:
            return
        if job.first_step_at is None:
            job.first_step_at = step.began
            job.stats.queue_ms = (step.began - job.started) * 1000
        if row.sample:
            job.sample_ms = step.took_ms
        job.position += len(row.tokens)
        if job.standby:
            if job.prompt is not None and job.position >= len(job.prompt) - 1:
                job.stats.finish = "stop"
                self._finish(job)
            return
        if not row.sample:
            return
        self._sampled(job, outcome)

    def _sampled(self, job: Job, outcome: RowResult) -> None:
        """A suggestion's next token: the end, or text to deliver (past what healing took off)."""
        if outcome.end:
            job.pending = None
            job.stats.finish = "stop"
            if job.cutter is not None:
                self._put(job, job.cutter.close(), timed=True)
            self._finish(job)
            return
        job.pending = outcome.token
        self._deliver(job, self._healed(job, outcome.piece))

    @staticmethod
    def _healed(job: Job, piece: bytes) -> bytes:
        """What of a sampled token's text extends past the typed text: while healing, the part
        that spells out what was taken off the prompt is the user's own, not suggested."""
        heal = job.heal
        if not heal:
            return piece
        if piece.startswith(heal):
            job.heal = b""
            return piece[len(heal):]
        if heal.startswith(piece):  # a shorter token: the next one goes on spelling it
            job.heal = heal[len(piece):]
            return b""
        job.heal = b""  # cannot happen with the allowed set; the piece is the model's own then
        return piece

    def _deliver(self, job: Job, piece: bytes) -> None:
        assert job.cutter is not None
        if job.stats.completion_tokens == 0:  # kept only if the suggestion never shows any text
            self._timed(job)
        job.stats.completion_tokens += 1
        text, stop = job.cutter.feed(job.decoder.decode(piece))
        self._put(job, text, timed=True)
        if stop:
            job.stats.finish = job.cutter.finish
            self._finish(job)

    @staticmethod
    def _timed(job: Job) -> None:
        """The suggestion's prefill and step times, to now and to the step that sampled its latest token."""
        job.stats.prefill_ms = (time.perf_counter() - job.started) * 1000
        job.stats.step_ms = job.sample_ms

    def _put(self, job: Job, text: str, timed: bool = False) -> None:
        """Queue suggestion text for the caller; count a suggestion cut as junk, by reason. With
        ``timed``, the first text queued sets the times: a token that only spells back the typed
        word, or text the cutter holds back, shows the user nothing yet."""
        if text:
            if timed and job.cutter is not None and job.cutter.sent == text:  # the first text it lets through
                self._timed(job)
            job.queue.put_nowait(text)
        if job.cutter is not None and job.cutter.dropped is not None and not job.counted:
            job.counted = True
            self.dropped[job.cutter.dropped] += 1

    def _fail_all(self, error: SmallfirstError) -> None:
        for job in self._jobs:
            self._finish(job, error)

    def _finish_key(self, key: int, finish: str) -> None:
        for job in self._jobs:
            if job.key == key:
                job.stats.finish = finish
                self._finish(job)

    def _finish(self, job: Job, error: SmallfirstError | None = None) -> None:
        if job.finished:
            return
        job.finished = True
        job.error = error
        job.queue.put_nowait(None)
        if job.release:
            self.owners.free(job.slot)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for job in list(self._jobs):
            self._finish(job)
        self._jobs = []
        self._idle.set()
