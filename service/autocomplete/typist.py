"""Autocomplete's event-loop state: a job (one suggestion, or a standby prefill) and a typist."""

from __future__ import annotations

import asyncio
import codecs
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from smallfirst.errors import SmallfirstError
from smallfirst.service.autocomplete.grounding import Grounding
from smallfirst.service.autocomplete.planner import JobView
from smallfirst.service.autocomplete.runner import PrepareRequest
from smallfirst.service.autocomplete.suggestion import SuggestionCutter
from smallfirst.service.llm.base import GenerationStats


RECENT_QUERIES = 3  # lookups whose hits a suggestion may still be copied from


@dataclass(eq=False)
class Job:
    """One suggestion being produced, or (``standby``) a prompt being prefilled into a slot.

    Event-loop state only: the scheduler thread sees a job through the rows planned for it."""

    key: int
    slot: int
    request: PrepareRequest
    standby: bool = False
    release: bool = False  # a prewarm: the slot is free for anyone once it is filled
    cutter: SuggestionCutter | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    prompt: tuple[int, ...] | None = None  # set once prepared
    epoch: int = 0  # the slot preparation its rows belong to
    position: int = 0  # tokens of this job in the slot's KV cache (prompt, then fed-back tokens)
    pending: int | None = None  # the sampled token not yet fed back
    heal: bytes = b""  # the typed text's end taken off the prompt, not yet spelled out by sampled tokens
    busy: bool = False  # a prepare or a step for it is queued or running
    cancelled: bool = False
    finished: bool = False
    counted: bool = False  # its junk cut is counted in the engine's ``dropped``
    error: SmallfirstError | None = None
    started: float = field(default_factory=time.perf_counter)
    first_step_at: float | None = None
    sample_ms: float = 0.0  # the model step that sampled its latest token (0: scores kept at the last keystroke)
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def view(self) -> JobView:
        assert self.prompt is not None
        shown = self.cutter is None or bool(self.cutter.sent)
        return JobView(self.key, self.slot, self.epoch, self.prompt, self.position, self.pending, self.standby, self.heal,
                       shown)


class Typist:
    """One connection's autocomplete state: its slot, its grounding, and a standby in progress."""

    def __init__(self) -> None:
        self.slot: int | None = None
        self.grounding: Grounding | None = None
        self.standby: Job | None = None
        self.query: tuple[str | None, str] | None = None  # (collection, words) last looked up
        self.queries: deque[tuple[str | None, str]] = deque(maxlen=RECENT_QUERIES)  # the last few, newest last
        self.wanted: tuple[str, str | None] | None = None
        self.refreshing: asyncio.Task[None] | None = None
        self.job: Job | None = None
        self.used: Grounding | None = None  # the passage in front of the latest request's text
        self.copied_from: dict[str, Any] | None = None  # the passage the latest suggestion was copied from
        self.prewarmed: tuple[int, str | None] | None = None  # (window start, passage id) prefilled ahead

    def evicted_from(self, slot: int) -> None:
        """Another typist took ``slot``: start cold next time, and drop a standby prefilling there."""
        if self.slot == slot:
            self.slot = None
        if self.standby is not None and self.standby.slot == slot:
            self.standby.cancelled = True
