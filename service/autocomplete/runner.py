"""The scheduler-thread side of autocomplete: tokenize, decode, sample. Nothing else runs there.

The engine on the event loop sends plain messages (:class:`PrepareRequest`, a tuple of
:class:`~smallfirst.service.autocomplete.planner.PlannedRow`) through the scheduler's queue and
gets plain results back through its futures; no job object crosses the thread boundary. Each
preparation of a slot starts a new epoch of it, and a row is applied only in the epoch and at
the length it was planned for: a row planned for a job that was superseded meanwhile (its slot
re-prepared for the next keystroke) is skipped instead of corrupting the slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from smallfirst.service.autocomplete.planner import PlannedRow
from smallfirst.service.llm.slots import Row, SlotContext

MAX_HEAL_TOKENS = 4  # the most tokens of an unfinished word taken off the prompt


@dataclass(frozen=True)
class PrepareRequest:
    """A prompt for a slot: a grounding block (already tokenized) and the text after it."""

    slot: int
    head: tuple[int, ...]
    tail: str
    reserve: int  # tokens kept free in the slot for the suggestion
    reuse: bool  # keep (or copy from another slot) the longest cached prefix; else start cold


@dataclass(frozen=True)
class RowResult:
    key: int
    applied: bool  # False: the slot no longer held what the row was planned on; nothing ran
    token: int | None = None  # the sampled token (rows that asked for one)
    piece: bytes = b""  # its text
    end: bool = False  # the sampled token ends the text


@dataclass(frozen=True)
class Prepared:
    tokens: tuple[int, ...]
    position: int  # how many of them the slot's KV cache holds already
    epoch: int  # the slot's preparation this job's rows must match
    heal: bytes = b""  # the typed text's end, taken off the prompt: the suggestion must start with it
    first: RowResult | None = None  # the slot held the whole prompt and its next-token scores: the first token, with no step


@dataclass(frozen=True)
class StepResult:
    began: float  # perf_counter when the step started
    took_ms: float
    rows: tuple[RowResult, ...]


def _word_byte(byte: int) -> bool:
    """A letter or digit, or a byte of a multi-byte character: inside a word."""
    return byte >= 0x80 or chr(byte).isalnum()


class SlotRunner:
    """Runs prepare and step messages on a :class:`SlotContext`; called on the scheduler thread only."""

    def __init__(self, ctx: SlotContext) -> None:
        self.ctx = ctx
        self._epochs = [0] * ctx.n_slots

    def grounding_block(self, text: str, max_tokens: int) -> tuple[str, tuple[int, ...]]:
        """A passage cut to ``max_tokens`` model tokens, as the text block in front of the typed
        text, and that block's tokens (with BOS)."""
        words = " ".join(text.split())
        block = self.ctx.text(self.ctx.tokenize(words, add_bos=False)[:max_tokens]) + "\n\n"
        return block, tuple(self.ctx.tokenize(block, add_bos=True))

    def prepare(self, request: PrepareRequest) -> Prepared:
        """Tokenize the prompt, fit it in the slot, and make the slot hold its longest cached prefix."""
        ctx = self.ctx
        head = list(request.head)
        body = ctx.tokenize(request.tail, add_bos=not head)
        body, heal = self._back_off(body, first=0 if head else 1)
        room = ctx.slot_ctx - request.reserve - 8 - len(head)
        if len(body) > room:
            body = body[len(body) - room:]
        tokens = head + body
        if request.reuse:
            position = ctx.adopt(request.slot, tokens, range(ctx.n_slots))
        else:
            ctx.clear(request.slot)
            position = 0
        self._epochs[request.slot] += 1
        first = None
        if position == len(tokens):  # a keystroke in the word the last one healed: same prompt, same scores
            first = self._result(-1, ctx.sample_kept(request.slot, self._allowed(heal) if heal else None))
        return Prepared(tuple(tokens), position, self._epochs[request.slot], heal, first)

    def _back_off(self, body: list[int], first: int) -> tuple[list[int], bytes]:
        """Token healing: the typed text's last token may be unfinished (a lone space, whose word
        the tokenizer would have joined to it, or part of a word), and a prompt ending on it is
        out of the model's distribution. It is taken off the prompt, with the tokens before it in
        the same word while some token of the vocabulary spells all of them and more (up to
        :data:`MAX_HEAL_TOKENS` tokens, never ``body[:first]``, the BOS), and returned as bytes
        that the first generated tokens must spell out. So the keystrokes inside a word mostly back
        off to one boundary, the word's start, where the slot kept the next-token scores: their
        first token needs no step, and can be the whole word. A last token holding a line break is
        kept: the text after it starts afresh."""
        if len(body) <= first:
            return body, b""
        heal = self.ctx.piece(body[-1])
        if not heal or b"\n" in heal:
            return body, b""
        end = len(body) - 1
        while end > first and len(body) - end < MAX_HEAL_TOKENS and _word_byte(heal[0]):
            before = self.ctx.piece(body[end - 1])
            if not before or not _word_byte(before[-1]) or not self.ctx.prefixes.extends(before + heal):
                break  # the word starts here (after punctuation, say), or no token could finish it in one
            heal, end = before + heal, end - 1
        return body[:end], heal

    def _allowed(self, heal: bytes) -> np.ndarray:
        """The tokens that may come next while ``heal`` is not spelled out yet: those that start
        with it, and the first token of its own tokenization."""
        try:
            own = self.ctx.tokenize(heal.decode("utf-8"), add_bos=False)
        except UnicodeDecodeError:  # it ends inside a character: only tokens that start with it
            own = []
        return self.ctx.prefixes.allowed(heal, own[0] if own else None)

    def step(self, rows: Sequence[PlannedRow]) -> StepResult:
        """Evaluate the rows whose slot is as planned, in one batch; sample where asked."""
        began = time.perf_counter()
        ctx = self.ctx
        live = [row for row in rows if self._epochs[row.slot] == row.epoch and len(ctx.tokens[row.slot]) == row.start]
        sampled = ctx.decode([Row(row.slot, list(row.tokens), row.sample,
                                  self._allowed(row.heal) if row.sample and row.heal else None,
                                  keep=row.sample and not row.decoding)
                              for row in live]) if live else []
        results = {row.key: self._result(row.key, token) for row, token in zip(live, sampled)}
        took_ms = (time.perf_counter() - began) * 1000
        return StepResult(began, took_ms, tuple(results.get(row.key, RowResult(row.key, applied=False)) for row in rows))

    def _result(self, key: int, token: int | None) -> RowResult:
        if token is None:
            return RowResult(key, applied=True)
        if self.ctx.is_end(token):
            return RowResult(key, applied=True, token=token, end=True)
        return RowResult(key, applied=True, token=token, piece=self.ctx.piece(token))
