"""The small model: a llama.cpp context driven one step at a time on the CPU scheduler."""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Concatenate, ParamSpec, Sequence, TypeVar

from smallfirst.errors import ConfigError, UpstreamError
from smallfirst.service.llm.admission import ModelQueue, Reservation, Turn
from smallfirst.service.llm.base import GenerationStats, StopMatcher
from smallfirst.service.llm import option_scoring
from smallfirst.service.llm.kv_cache import PrefixCache
from smallfirst.service.llm.loading import load_llama
from smallfirst.service.scheduler import CpuScheduler, Priority
from smallfirst.threads import OwnerThread

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

RECOMPUTE_TOKENS = 16  # an assembled passage's first tokens are evaluated again in place (see _assemble)
YIELDING_PREFILL_STEP = 8  # ~50 ms on the reference machine: the longest a keystroke then waits


def _shared_prefix(have: Sequence[int], want: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    shared = 0
    for a, b in zip(have, want):
        if a != b:
            break
        shared += 1
    return shared


class LocalBackend:
    """Streams from one llama.cpp context with KV-prefix reuse and step-wise cancellation.

    Only the scheduler's thread touches the context. One generation at a time holds it; the
    next prompt reuses the longest token prefix already in the KV cache, or a longer one saved
    in ``prefixes`` (see :mod:`smallfirst.service.llm.kv_cache`), and evaluates only the rest, in steps of
    ``prefill_step`` tokens so that more urgent work can slip between.
    """

    def __init__(
        self, name: str, llama: Any, scheduler: CpuScheduler, priority: Priority,
        prefill_step: int = 32, queue_limit: int = 16, prefix_cache_bytes: int = 0,
        owner: OwnerThread | None = None, n_ctx: int | None = None, yield_to: Callable[[], bool] = lambda: False,
        assemble: bool = False,
    ) -> None:
        self.name = name
        self._llama = llama
        self._owner = owner if owner is not None else OwnerThread(f"LocalBackend {name}")
        self._scheduler = scheduler
        self._priority = priority
        self._prefill_step = max(1, prefill_step)
        self.queue = ModelQueue(name, queue_limit, typing=lambda: self.yield_to())
        self.prefixes = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        # Sequences beside the prompt's: options are scored in them, passages assembled in the first.
        self._lanes = min(option_scoring.OPTION_SEQUENCES, int(getattr(getattr(llama, "context_params", None), "n_seq_max", 1)) - 1)
        self.passage_states = PrefixCache(prefix_cache_bytes) if assemble and prefix_cache_bytes > 0 and self._lanes else None
        self.assembled_tokens = 0  # prompt tokens placed from passage states computed after other text
        self.prefilled_tokens = 0  # tokens evaluated by prefill steps and option scoring since load (restored ones excluded)
        self.n_ctx: int = n_ctx if n_ctx is not None else llama.n_ctx()
        self.yield_to = yield_to  # True: prefill in short steps (someone is typing)

    @property
    def waiting(self) -> int:
        """Requests waiting for this model, admitted ones still retrieving included."""
        return self.queue.waiting

    def predicted_wait_s(self) -> float:
        """Seconds until a request admitted now would take the model (see :class:`ModelQueue`)."""
        return self.queue.predicted_wait_s()

    def admit(self, budget_s: float) -> Reservation:
        """A place in the model's queue, or ``Busy`` at once (see :meth:`ModelQueue.admit`)."""
        return self.queue.admit(budget_s)

    @classmethod
    async def load(
        cls, name: str, model_path: Path, n_ctx: int, threads: int, scheduler: CpuScheduler,
        priority: Priority, prefill_step: int, queue_limit: int, prefix_cache_bytes: int = 0,
        lora_path: Path | None = None, yield_to: Callable[[], bool] = lambda: False, assemble: bool = False,
    ) -> "LocalBackend":
        """Load the context (and its LoRA adapter, if any) on the scheduler thread, which then owns
        it, with sequences beside the prompt's for :meth:`choose` and :meth:`_assemble`; ``assemble``:
        place passages saved after other text into new prompts."""
        def make() -> tuple[Any, OwnerThread, int]:
            llama = load_llama(model_path, n_ctx, threads, lora_path=lora_path, sequences=1 + option_scoring.OPTION_SEQUENCES)
            return llama, OwnerThread(f"LocalBackend {name}"), llama.n_ctx()

        llama, owner, size = await scheduler.run(Priority.CONTROL, make)
        return cls(name, llama, scheduler, priority, prefill_step, queue_limit, prefix_cache_bytes, owner, size, yield_to,
                   assemble)

    # Steps run on the scheduler thread -------------------------------------------------

    def _tokenize(self, prompt: str, passages: Sequence[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """The prompt's tokens and its passages' token spans. Each passage is tokenized on its own,
        so its tokens are the same in every prompt that holds it."""
        tokenize = self._llama.tokenize
        edges = sorted({offset for span in passages for offset in span if 0 < offset < len(prompt)})
        if not edges:
            return tokenize(prompt.encode("utf-8"), add_bos=True, special=False), []
        tokens: list[int] = []
        at = {0: 0}
        for start, end in zip([0, *edges], [*edges, len(prompt)]):
            tokens += tokenize(prompt[start:end].encode("utf-8"), add_bos=start == 0, special=False)
            at[end] = len(tokens)
        return tokens, [(at[start], at[end]) for start, end in passages if start in at and end in at and start < end]

    def _prepare(
        self, prompt: str, max_tokens: int, save_at: Sequence[int], passages: Sequence[tuple[int, int]] = (),
    ) -> tuple[list[int], int, list[int], list[tuple[int, int]]]:
        """Tokenize, fit into the window, and roll the KV cache back to the shared prefix, or
        restore a longer saved one. Returns the tokens, how many are already in the KV cache,
        the token positions whose state to save (``save_at``, character offsets, and the end of
        each passage), and the passages' token spans still to evaluate (a prefill step ends at
        each edge)."""
        self._owner.check("_prepare")
        llama = self._llama
        tokens, spans = self._tokenize(prompt, passages)
        room = self.n_ctx - max_tokens - 1
        truncated = len(tokens) > room
        if truncated:
            tokens, spans = tokens[:1] + tokens[len(tokens) - room + 1:], []
        last = len(tokens) - 1  # the last prompt token is always evaluated, for fresh logits
        cached = min(_shared_prefix(llama.input_ids[: llama.n_tokens], tokens), last)
        # What follows the last whole passage in the KV is evaluated again from that passage's end:
        # each piece is then always computed in the same steps after the same prefix, whichever
        # prompt came before, and a passage found in the KV or restored answers as a cold prefill
        # in the same steps would (while someone types, steps are shorter: an equally valid state
        # that differs in the last bits).
        edges = {edge for span in spans for edge in span}
        cached = max([edge for edge in edges if edge <= cached], default=cached)
        llama.n_tokens = cached  # the next eval drops KV entries from here on
        if self.prefixes is not None and not truncated:  # a truncated prompt's positions match no saved state
            found = self.prefixes.longest(tokens, longer_than=cached, at_most=last,
                                          only=edges | {last} if edges else None)  # never inside a passage
            if found is not None:
                cached = found[0] if self._restore(tokens, *found) else 0  # a failed restore empties the sequence
        spans = [(start, end) for start, end in spans if end > cached]
        if self.prefixes is None or truncated:
            return tokens, cached, [], spans
        points = {end for _, end in spans}
        for offset in save_at:
            if offset >= len(prompt):  # the whole prompt: no second tokenization
                shared = len(tokens)
            else:
                shared = _shared_prefix(self._tokenize(prompt[:offset], passages)[0], tokens)
            points.add(min(shared, last))
        saves = sorted(p for p in points if cached < p <= last and not self.prefixes.holds(tokens[:p]))
        return tokens, cached, saves, spans

    def _restore(self, tokens: Sequence[int], length: int, blob: bytes) -> bool:
        """Load a saved state of ``tokens[:length]`` into the context's sequence (which it replaces)."""
        self._owner.check("_restore")
        from llama_cpp import llama_cpp as lib

        llama = self._llama
        buffer = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        if lib.llama_state_seq_set_data(llama._ctx.ctx, buffer, len(blob), 0) == 0:
            log.warning("could not restore a saved KV state of %d tokens; evaluating the prompt instead", length)
            llama.n_tokens = 0
            llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            return False
        llama.input_ids[:length] = tokens[:length]
        llama.n_tokens = length
        return True

    def _eval(self, tokens: Sequence[int], save: Sequence[int] | None = None,
              passage: tuple[int, int] | None = None) -> None:
        """Evaluate ``tokens`` after what the context holds; then, when ``save`` is given (the whole
        prompt prefix now in the context), save that state, and when ``passage`` is (a span of
        the prompt just evaluated from its start), save its cells alone."""
        self._owner.check("_eval")
        self._llama.eval(tokens)
        self.prefilled_tokens += len(tokens)
        if save is not None and self.prefixes is not None:
            blob = self._sequence_state(0)
            if blob:
                self.prefixes.put(save, blob)
        if passage is not None and self.passage_states is not None:
            from llama_cpp import llama_cpp as lib

            start, end = passage
            memory = lib.llama_get_memory(self._llama._ctx.ctx)
            lib.llama_memory_seq_rm(memory, 1, -1, -1)
            lib.llama_memory_seq_cp(memory, 0, 1, start, end)
            blob = self._sequence_state(1)
            lib.llama_memory_seq_rm(memory, 1, -1, -1)
            if blob:  # stored with the position it starts at
                self.passage_states.put(self._llama.input_ids[start:end].tolist(), start.to_bytes(4, "little") + blob)

    def _sequence_state(self, sequence: int) -> bytes:
        """One sequence's KV state, as llama.cpp serialises it (empty when that fails)."""
        from llama_cpp import llama_cpp as lib

        ctx = self._llama._ctx.ctx
        size = lib.llama_state_seq_get_size(ctx, sequence)
        buffer = (ctypes.c_uint8 * size)()
        written = lib.llama_state_seq_get_data(ctx, buffer, size, sequence)
        return bytes(memoryview(buffer)[:written]) if written else b""

    def _assemble(self, tokens: Sequence[int], start: int, end: int) -> int | None:
        """Place the saved cells of the passage ``tokens[start:end]``, computed after other text
        and at other positions, into the prompt at ``start``: restored into the scratch sequence,
        shifted there (llama.cpp rotates the keys on the next decode), copied into sequence 0.
        Its first ``RECOMPUTE_TOKENS`` tokens are then evaluated again in place, now attending
        to what precedes them here. Not exact: the passage's other cells still attend to the text
        they were computed after. Returns how many tokens were placed without evaluation; None
        (nothing placed) when no state is saved or restoring it fails."""
        self._owner.check("_assemble")
        from llama_cpp import llama_cpp as lib

        assert self.passage_states is not None
        stored = self.passage_states.get(tokens[start:end])
        if stored is None:
            return None
        was, blob = int.from_bytes(stored[:4], "little"), stored[4:]
        llama = self._llama
        memory = lib.llama_get_memory(llama._ctx.ctx)
        llama.n_tokens = start
        llama._ctx.kv_cache_seq_rm(0, start, -1)
        buffer = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
        lib.llama_memory_seq_rm(memory, 1, -1, -1)
        if lib.llama_state_seq_set_data(llama._ctx.ctx, buffer, len(blob), 1) == 0:
            lib.llama_memory_seq_rm(memory, 1, -1, -1)
            log.warning("could not restore a saved passage of %d tokens; evaluating it instead", end - start)
            return None
        lib.llama_memory_seq_add(memory, 1, -1, -1, start - was)
        again = min(RECOMPUTE_TOKENS, end - start)
        lib.llama_memory_seq_rm(memory, 1, start, start + again)
        try:
            if again:  # sequence 0 must grow position by position, so these come before the copy
                llama.eval(tokens[start:start + again])
                self.prefilled_tokens += again
        except BaseException:
            lib.llama_memory_seq_rm(memory, 1, -1, -1)
            raise
        lib.llama_memory_seq_cp(memory, 1, 0, -1, -1)
        lib.llama_memory_seq_rm(memory, 1, -1, -1)
        llama.input_ids[start:end] = tokens[start:end]
        llama.n_tokens = end
        self.assembled_tokens += end - start - again
        return end - start - again

    def _step(self, generator: Any) -> tuple[bytes, bool]:
        """Evaluate the previous token and sample the next: one model step."""
        self._owner.check("_step")
        from llama_cpp import llama_cpp as lib

        token = next(generator)
        if lib.llama_vocab_is_eog(self._llama._model.vocab, token):
            return b"", True
        return self._llama.detokenize([token]), False

    def _on_context(self, operation: Callable[Concatenate[Any, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one of :mod:`~smallfirst.service.llm.option_scoring`' context operations (scheduler thread)."""
        self._owner.check(operation.__name__)
        return operation(self._llama, *args, **kwargs)

    def _last_logprobs(self, tokens: Sequence[int]) -> Any:
        """Evaluate the prompt's last token; the distribution of the token after it."""
        self._owner.check("_last_logprobs")
        self._llama.n_tokens = len(tokens) - 1
        self._llama.eval(tokens[-1:])
        return option_scoring.next_logprobs(self._llama)

    def _score_rows(self, rows: Sequence[option_scoring.Row]) -> list[float]:
        self._owner.check("_score_rows")
        scores = option_scoring.score_rows(self._llama, rows, self.name)
        self.prefilled_tokens += len(rows)
        return scores

    async def _score_options(self, turn: Turn, prompt_length: int, first: Any, ids: list[list[int]]) -> list[float]:
        """Each option's mean token log-probability after the prompt, teacher-forced. Up to
        ``option_scoring.OPTION_SEQUENCES`` options go side by side, each in its own sequence sharing the prompt's
        cells, their tokens in steps of at most a prefill step's rows, so a handful of short
        options costs one step, not one per token, and keystrokes still slip between steps."""
        if not self._lanes:
            raise ConfigError(f"the {self.name} model's context has no sequence to score options in")
        run = self._scheduler.run
        totals = [float(first[option[0]]) for option in ids]
        for group in range(0, len(ids), self._lanes):
            members = list(range(group, min(group + self._lanes, len(ids))))
            rows, owners = option_scoring.layout(ids, members, prompt_length)
            if not rows:
                continue
            try:
                await run(self._priority, self._on_context, option_scoring.fork, prompt_length, len(members))
                done = 0
                while done < len(rows):
                    typing = self.yield_to()
                    turn.typed = turn.typed or typing
                    step = YIELDING_PREFILL_STEP if typing else self._prefill_step
                    scores = await run(self._priority, self._score_rows, rows[done:done + step])
                    for owner, score in zip(owners[done:done + step], scores):
                        totals[owner] += score
                    done += step
            finally:
                await asyncio.shield(run(Priority.CONTROL, self._on_context, option_scoring.unfork, len(members)))
        return [total / len(option) for total, option in zip(totals, ids)]

    # The stream --------------------------------------------------------------------------

    async def _prefill(self, turn: Turn, tokens: Sequence[int], start: int, save_points: list[int],
                       spans: Sequence[tuple[int, int]] = ()) -> int:
        """Evaluate ``tokens[start:-1]`` in scheduler steps (short ones while someone types), each
        ending at the next passage edge or save point it reaches; a passage whose cells were saved
        in another prompt is assembled instead (when enabled). The last prompt token is left for
        the step that reads its logits. Returns how many tokens were placed without evaluation."""
        run = self._scheduler.run
        ends = sorted(set(save_points) | {edge for span in spans for edge in span})
        saves = set(save_points)
        begins = {s: e for s, e in spans}
        placed = 0
        passage: tuple[int, int] | None = None  # the passage being evaluated from its start, if any
        while start < len(tokens) - 1:
            end_of = begins.get(start)
            if end_of is not None and end_of <= len(tokens) - 1 and self.passage_states is not None:
                assembled = await run(self._priority, self._assemble, tokens, start, end_of)
                if assembled is not None:
                    placed += assembled
                    start = end_of
                    saves = set()  # what follows holds approximate cells: not for the exact store
                    continue
            if end_of is not None:
                passage = (start, end_of)
            typing = self.yield_to()
            turn.typed = turn.typed or typing
            step = YIELDING_PREFILL_STEP if typing else self._prefill_step
            end = min([start + step, len(tokens) - 1, *(e for e in ends if e > start)])
            whole = passage if passage is not None and passage[1] == end else None
            await run(self._priority, self._eval, tokens[start:end], tokens[:end] if end in saves else None, whole)
            if whole is not None:
                passage = None
            start = end
        return placed

    async def stream(
        self,
        prompt: str,
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        stats: GenerationStats | None = None,
        reservation: Reservation | None = None,
        save_at: Sequence[int] = (),
        passages: Sequence[tuple[int, int]] = (),
    ) -> AsyncIterator[str]:
        """Stream a completion; ``reservation`` is the place :meth:`admit` gave (none: the queue
        limit alone applies); ``save_at``: character offsets of the prompt after which the KV
        state is worth saving for later prompts with the same start; ``passages``: character
        spans of the prompt each tokenized and evaluated on their own, and saved at their end
        (see :class:`~smallfirst.service.llm.prompts.PassagePrompt`)."""
        stats = stats if stats is not None else GenerationStats()
        async with self.queue.turn(stats, reservation) as turn:
            max_tokens = max(1, min(max_tokens, self.n_ctx // 2))
            run = self._scheduler.run
            started = time.perf_counter()
            tokens, cached, save_points, spans = await run(self._priority, self._prepare, prompt, max_tokens, save_at, passages)
            stats.prompt_tokens = len(tokens)
            stats.cached_tokens = cached + await self._prefill(turn, tokens, cached, save_points, spans)
            generator = self._llama.generate(tokens, temp=temperature, repeat_penalty=1.1 if temperature > 0 else 1.0)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            stopper = StopMatcher(stop)
            stats.finish = "length"
            while stats.completion_tokens < max_tokens:
                turn.typed = turn.typed or self.yield_to()
                try:
                    piece, end = await run(self._priority, self._step, generator)
                except RuntimeError as exc:
                    raise UpstreamError(f"the {self.name} model failed: {exc}") from exc
                if stats.completion_tokens == 0:
                    stats.prefill_ms = (time.perf_counter() - started) * 1000
                    turn.first_token_s = time.perf_counter() - turn.held_from
                if end:
                    stats.finish = "stop"
                    break
                stats.completion_tokens += 1
                text = stopper.feed(decoder.decode(piece))
                if text:
                    yield text
                if stopper.stopped:
                    stats.finish = "stop"
                    return
            tail = stopper.feed(decoder.decode(b"", final=True)) + stopper.flush()
            if tail:
                yield tail

    async def choose(
        self, prompt: str, options: Sequence[str], *, stats: GenerationStats | None = None,
        reservation: Reservation | None = None, save_at: Sequence[int] = (), passages: Sequence[tuple[int, int]] = (),
    ) -> int:
        """Which of ``options`` the model finds likeliest to continue ``prompt``: the index of the
        best of :meth:`option_scores`."""
        scores = await self.option_scores(prompt, options, stats=stats, reservation=reservation, save_at=save_at,
                                          passages=passages)
        return max(range(len(options)), key=lambda i: scores[i])

    async def option_scores(
        self, prompt: str, options: Sequence[str], *, stats: GenerationStats | None = None,
        reservation: Reservation | None = None, save_at: Sequence[int] = (), passages: Sequence[tuple[int, int]] = (),
    ) -> list[float]:
        """How likely the model finds each of ``options`` to continue ``prompt`` (each option's mean
        token log-probability, teacher-forced): an answer picked among what the sources hold
        rather than written freely (see :meth:`_score_options`)."""
        if not options:
            raise ValueError("choose needs at least one option")
        stats = stats if stats is not None else GenerationStats()
        async with self.queue.turn(stats, reservation) as turn:
            run = self._scheduler.run
            started = time.perf_counter()
            room = option_scoring.OPTION_TOKENS * min(len(options), max(1, self._lanes))  # the options' cells, side by side
            tokens, cached, save_points, spans = await run(self._priority, self._prepare, prompt, room, save_at, passages)
            stats.prompt_tokens = len(tokens)
            stats.cached_tokens = cached + await self._prefill(turn, tokens, cached, save_points, spans)
            first = await run(self._priority, self._last_logprobs, tokens)
            ids = await run(self._priority, self._on_context, option_scoring.option_tokens, options)
            scores = await self._score_options(turn, len(tokens), first, ids)
            best = max(range(len(options)), key=lambda i: scores[i])
            stats.prefill_ms = (time.perf_counter() - started) * 1000
            turn.first_token_s = time.perf_counter() - turn.held_from
            stats.completion_tokens = len(ids[best])
            stats.finish = "stop"
            return scores
