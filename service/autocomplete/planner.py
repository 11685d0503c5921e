"""The autocomplete step planner: which tokens of which jobs the next model step evaluates.

Pure: it sees plain snapshots of the jobs (no model, no tokenizer, no clock), so it runs on the
event loop and is tested on hand-made job sets. The engine turns a :class:`Plan` into a message
for the scheduler thread, which alone runs the model.

A step takes
- every new request's remaining prompt tokens (a cold prompt in chunks), then
- one token for each suggestion being continued, up to ``max_rows`` sampled rows, or
- when no typist waits, a chunk of a standby prefill (new grounding for a typist).
A step with a new request (or one whose first text has not gone out yet: its first tokens only
spelled out what token healing took off) runs at keystroke priority; continuing suggestions or
prefilling a standby runs at answer priority, so a streaming answer and a typist share the CPU fairly while a
new keystroke always goes first. At most one step of each priority is in flight, and a job is in
at most one step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from smallfirst.service.scheduler import Priority


@dataclass(frozen=True)
class Limits:
    """How much one step may take."""

    max_rows: int = 4  # sampled rows per step: each adds ~9-13 ms to the step on the reference machine
    step_tokens: int = 16  # prompt tokens per step while other typists may be waiting
    alone_step_tokens: int = 48  # a cold prompt with nobody else waiting
    standby_step_tokens: int = 4  # a standby prefill chunk: the longest a new keystroke waits behind it


@dataclass(frozen=True)
class JobView:
    """What the planner needs of one prepared job, not in a step now."""

    key: int
    slot: int
    epoch: int  # which preparation of the slot the job's tokens belong to
    prompt: tuple[int, ...]
    position: int  # tokens of the job in the slot's KV cache (the prompt, then fed-back tokens)
    pending: int | None = None  # the sampled token not yet fed back (a suggestion being continued)
    standby: bool = False
    heal: bytes = b""  # what the next sampled token must start with (or be a start of): token healing
    shown: bool = True  # some of the suggestion has gone out (no: the user still waits for its first text)

    @property
    def fresh(self) -> bool:
        """A request whose prompt is still being evaluated."""
        return not self.standby and self.pending is None

    @property
    def awaited(self) -> bool:
        """A request the user still waits on for its first text: its prompt is being evaluated, or
        its first tokens only spelled out what healing took off (or were held back)."""
        return not self.standby and (self.pending is None or not self.shown)


@dataclass(frozen=True)
class PlannedRow:
    """Tokens to append to a slot still in preparation ``epoch`` and holding exactly ``start``
    tokens; ``sample``: the next token after them."""

    key: int
    slot: int
    epoch: int
    start: int
    tokens: tuple[int, ...]
    sample: bool
    decoding: bool  # the row feeds back a sampled token (else it evaluates prompt tokens)
    heal: bytes = b""  # the sampled token must start with this, or be a start of it


@dataclass(frozen=True)
class Plan:
    """One step: its priority, its rows, and the standbys that are already complete (no row)."""

    priority: Priority
    rows: tuple[PlannedRow, ...] = ()
    filled: tuple[int, ...] = ()


def next_step(jobs: Sequence[JobView], live: int, in_flight: frozenset[Priority], limits: Limits = Limits()) -> Plan | None:
    """The step to launch now, or None.

    ``jobs``: prepared jobs not in a step now; ``live``: every unfinished job (prepared or not,
    in a step or not); ``in_flight``: priorities of the steps launched and not yet done. A new
    request gets a keystroke step at once even while an answer-priority step waits; anything
    else waits until no step is in flight."""
    if any(job.awaited for job in jobs):
        return None if Priority.KEYSTROKE in in_flight else _keystroke_step(jobs, live, limits)
    if in_flight or not jobs:
        return None
    return _background_step(jobs, limits)


def _keystroke_step(jobs: Sequence[JobView], live: int, limits: Limits) -> Plan:
    rows: list[PlannedRow] = []
    budget = limits.alone_step_tokens if live == 1 else limits.step_tokens
    sampled = 0
    for job in jobs:
        if not job.fresh:
            continue
        if budget <= 0 or sampled >= limits.max_rows:
            break
        remaining = job.prompt[job.position:]
        take = remaining[:budget]
        sample = len(take) == len(remaining)
        rows.append(PlannedRow(job.key, job.slot, job.epoch, job.position, take, sample, decoding=False,
                               heal=job.heal if sample else b""))
        budget -= len(take)
        sampled += sample
    rows.extend(_continuations(jobs, limits.max_rows - sampled))
    return Plan(Priority.KEYSTROKE, tuple(rows))


def _background_step(jobs: Sequence[JobView], limits: Limits) -> Plan | None:
    rows = _continuations(jobs, limits.max_rows)
    if rows:
        return Plan(Priority.ANSWER, tuple(rows))
    for job in jobs:
        if job.standby:  # the last prompt token is left for the request that will use the slot
            end = min(job.position + limits.standby_step_tokens, len(job.prompt) - 1)
            if end <= job.position:
                return Plan(Priority.ANSWER, filled=(job.key,))
            return Plan(Priority.ANSWER, (PlannedRow(job.key, job.slot, job.epoch, job.position,
                                                     job.prompt[job.position:end], False, decoding=False),))
    return None


def _continuations(jobs: Sequence[JobView], room: int) -> list[PlannedRow]:
    """One row per suggestion being continued (its sampled token fed back), at most ``room``;
    those the user still waits on first."""
    rows: list[PlannedRow] = []
    for job in sorted(jobs, key=lambda job: job.shown):
        if job.pending is not None and len(rows) < room:
            rows.append(PlannedRow(job.key, job.slot, job.epoch, job.position, (job.pending,), True, decoding=True,
                                   heal=job.heal))
    return rows
