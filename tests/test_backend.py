"""The llama.cpp backend on the real small model: prefix reuse, cancellation, stops, the scheduler."""

from __future__ import annotations

import asyncio

import pytest

from smallfirst.service.llm.base import GenerationStats
from smallfirst.service.llm.local import LocalBackend
from smallfirst.service.llm.loading import bundled_model_path
from smallfirst.service.llm.option_scoring import option_tokens
from smallfirst.service.scheduler import CpuScheduler, Priority
from tests.waiting import until

pytestmark = pytest.mark.slow


def run(coro):
    return asyncio.run(coro)


async def collect(backend: LocalBackend, prompt: str, **kw) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    out = [t async for t in backend.stream(prompt, stats=stats, **kw)]
    return "".join(out), stats


async def load(scheduler: CpuScheduler, n_ctx: int = 1024, prefill_step: int = 32) -> LocalBackend:
    return await LocalBackend.load("small", bundled_model_path(), n_ctx, 0, scheduler, Priority.KEYSTROKE, prefill_step, 4)


def test_consecutive_keystrokes_reuse_the_kv_prefix(scheduler) -> None:
    async def scenario():
        backend = await load(scheduler)
        text = "The history of the lighthouse begins in 1874, when the harbor authority decided to build a tower on the northern"
        first, s1 = await collect(backend, text, max_tokens=4)
        second, s2 = await collect(backend, text + " break", max_tokens=4)
        third, s3 = await collect(backend, text + " breakwater", max_tokens=4)
        return (s1, s2, s3), first
    (s1, s2, s3), first = run(scenario())
    assert s1.cached_tokens == 0 and s1.completion_tokens == 4 and first
    # Only the changed tail is evaluated: Gemma's sliding-window cache must allow partial reuse.
    assert s2.cached_tokens >= s1.prompt_tokens - 2
    assert s3.prompt_tokens - s3.cached_tokens <= 3


def test_same_output_with_and_without_cache(scheduler) -> None:
    async def scenario():
        warm = await load(scheduler)
        await collect(warm, "Paris is the capital of", max_tokens=3)
        cached, stats = await collect(warm, "Paris is the capital of France. Berlin is the capital of", max_tokens=6)
        cold = await load(scheduler)
        fresh, _ = await collect(cold, "Paris is the capital of France. Berlin is the capital of", max_tokens=6)
        return cached, fresh, stats
    cached, fresh, stats = run(scenario())
    assert stats.cached_tokens > 0
    # Later tokens may differ in near-ties (different batch splits round differently); the first
    # words must agree, which stale or misplaced KV entries would break.
    assert cached.split()[:1] == fresh.split()[:1] == ["Germany."]


def test_stop_string_ends_generation(scheduler) -> None:
    async def scenario():
        backend = await load(scheduler)
        return await collect(backend, "1. apples\n2. pears\n3.", max_tokens=40, stop=("\n",))
    text, stats = run(scenario())
    assert "\n" not in text and stats.finish == "stop" and stats.completion_tokens < 40


def test_cancelling_the_consuming_task_stops_within_one_step_even_during_prefill(scheduler) -> None:
    """As the service cancels a request (a ``cancel`` frame, a new keystroke, a closed socket): by
    cancelling the task that consumes the stream."""
    step = 16

    async def scenario():
        backend = await load(scheduler, n_ctx=2048, prefill_step=step)
        stats = GenerationStats()

        async def consume():
            async for _ in backend.stream("word " * 900, max_tokens=50, stats=stats):
                pass
        steps_before = scheduler.steps
        task = asyncio.create_task(consume())
        await until(lambda: backend.prefilled_tokens > 0, 120, "the prompt's first prefill step has run")
        at_cancel = backend.prefilled_tokens
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The step already running when the task was cancelled still ends; this job runs after it.
        await scheduler.run(Priority.CONTROL, lambda: None)
        steps = scheduler.steps - steps_before
        after = backend.prefilled_tokens
        _, next_stats = await collect(backend, "Hello", max_tokens=1)  # the model is free for the next request
        return stats, at_cancel, after, steps, next_stats
    stats, at_cancel, after, steps, next_stats = run(scenario())
    assert stats.finish == "cancelled" and stats.completion_tokens == 0
    assert stats.prompt_tokens > 900 and at_cancel >= step
    assert after - at_cancel <= step, (at_cancel, after)  # at most the one step that was running
    assert after < stats.prompt_tokens - step, (after, stats.prompt_tokens)  # the rest was never evaluated
    assert steps < stats.prompt_tokens // step, steps  # nor run as steps
    assert next_stats.completion_tokens == 1


def test_a_keystroke_runs_between_the_prefill_steps_of_an_answer(scheduler) -> None:
    """The order the scheduler ran the steps in: the keystroke's steps went ahead of the answer's
    queued prefill steps, and it was served while most of that prefill was still to come."""
    async def scenario():
        answer = await LocalBackend.load("small", bundled_model_path(), 2048, 0, scheduler, Priority.ANSWER, 16, 4)
        keys = await load(scheduler)
        await collect(keys, "Hello", max_tokens=1)
        await scheduler.run(Priority.CONTROL, lambda: None)  # the last step's observer has run: not recorded below
        order: list[int] = []
        scheduler.on_step = lambda priority, _seconds: order.append(priority)
        try:
            task = asyncio.create_task(collect(answer, "story " * 600, max_tokens=5))
            await until(lambda: answer.prefilled_tokens > 0, 120, "the answer is prefilling")
            submitted = len(order)
            await collect(keys, "Hello there", max_tokens=1)
            prefilled_when_served = answer.prefilled_tokens
            _, stats = await task
            await scheduler.run(Priority.CONTROL, lambda: None)  # every earlier step has been recorded
        finally:
            scheduler.on_step = None
        return order, submitted, prefilled_when_served, stats
    order, submitted, prefilled_when_served, stats = run(scenario())
    assert stats.completion_tokens == 5  # the answer finished too
    # Served while most of the answer's prompt was still to be evaluated: it did not wait for the prefill.
    assert prefilled_when_served < (stats.prompt_tokens - stats.cached_tokens) // 2, (prefilled_when_served, stats)
    keystroke = [i for i, p in enumerate(order) if p == Priority.KEYSTROKE]
    assert keystroke and keystroke[0] >= submitted, order
    # Before its first step, at most the answer step then running (and one not yet recorded).
    assert order[submitted:keystroke[0]].count(Priority.ANSWER) <= 2, order
    # Then at most one answer step before each of its later steps.
    assert order[keystroke[0]:keystroke[-1]].count(Priority.ANSWER) <= len(keystroke), order


def test_an_admitted_answer_is_given_up_in_the_queue_once_its_budget_cannot_be_met(scheduler) -> None:
    """The request holding the model runs past every estimate: the admitted answer behind it gets
    ``busy`` while it waits, not a first token long after its budget; a request that was never
    admitted (no promise made) keeps its place, and the model serves it once free."""
    from smallfirst.errors import Busy

    async def scenario():
        backend = await load(scheduler)
        holder = backend.stream("1, 2, 3, 4,", max_tokens=6)
        await holder.__anext__()  # the holder has its first token and keeps the model while paused here
        # Nothing measured yet: the prior predicts the holder done well within 4 s, so the answer is admitted.
        reservation = backend.admit(budget_s=4.0)
        admitted = asyncio.create_task(collect(backend, "Paris is the capital of", max_tokens=2, reservation=reservation))
        unadmitted = asyncio.create_task(collect(backend, "Berlin is the capital of", max_tokens=2))
        await until(lambda: admitted.done(), 60, "the admitted answer is given up")
        waiting_after = backend.waiting
        rest = [piece async for piece in holder]  # the holder finishes and frees the model
        text, stats = await unadmitted
        return admitted.exception(), backend.queue.shed, waiting_after, rest, stats
    error, shed, waiting_after, rest, stats = run(scenario())
    assert isinstance(error, Busy) and error.retry_after_ms is not None and error.retry_after_ms >= 100, error
    assert "budget" in error.message
    assert shed == 1 and waiting_after == 1  # only the request that was never admitted still waits
    assert stats.completion_tokens == 2 and stats.finish in ("length", "stop")


def test_choose_picks_the_likeliest_option_and_leaves_the_prompt_reusable(scheduler) -> None:
    async def scenario():
        backend = await load(scheduler)
        prompt = "Paris is the capital of France. Rome is the capital of Italy. Berlin is the capital of"
        picked = await backend.choose(prompt, ["Spain", "Germany", "Portugal"], stats=(stats := GenerationStats()))
        after, after_stats = await collect(backend, prompt, max_tokens=2)  # the options left nothing in the KV cache
        cold, _ = await collect(await load(scheduler), prompt, max_tokens=2)
        return picked, stats, after, after_stats, cold
    picked, stats, after, after_stats, cold = run(scenario())
    assert picked == 1 and stats.finish == "stop" and stats.completion_tokens >= 1
    assert after_stats.cached_tokens == after_stats.prompt_tokens - 1  # only the last prompt token re-evaluated
    assert after.split()[:1] == cold.split()[:1]


def test_options_are_scored_side_by_side_in_one_step_as_one_at_a_time_would(scheduler) -> None:
    """Several multi-token options go through the model in one step, each in its own sequence
    beside the prompt's, and score as they do one token a step; nothing of them stays behind."""
    prompt = "The museum's rooms are named after painters. The blue room is the Vermeer room. The largest room is the"
    options = ["Rembrandt van Rijn room", "Frans Hals gallery", "Johannes Vermeer room", "Jan Steen hall"]

    async def scores(lanes: int, step: int) -> tuple[list[float], int, int, int]:
        backend = await load(scheduler)
        backend._lanes = lanes
        stats = GenerationStats()
        async with backend.queue.turn(stats, None) as turn:
            tokens, cached, saves, spans = await scheduler.run(Priority.ANSWER, backend._prepare, prompt, 24, (), ())
            await backend._prefill(turn, tokens, cached, saves, spans)
            first = await scheduler.run(Priority.ANSWER, backend._last_logprobs, tokens)
            ids = await scheduler.run(Priority.ANSWER, backend._on_context, option_tokens, options)
            calls = []
            rows = backend._score_rows
            backend._score_rows = lambda batch: calls.append(len(batch)) or rows(batch)  # type: ignore[method-assign]
            backend._prefill_step = step  # the prompt was evaluated in the same steps for both
            result = await backend._score_options(turn, len(tokens), first, ids)
            left = await scheduler.run(Priority.CONTROL, _largest_other_position, backend)
        return result, len(calls), left, sum(len(i) - 1 for i in ids)

    side, side_steps, side_left, rows = run(scores(8, 32))
    single, single_steps, single_left, _ = run(scores(1, 1))
    assert side_steps == 1 and single_steps == rows > 4
    assert side_left == single_left == -1
    assert max(abs(a - b) for a, b in zip(side, single)) < 0.03
    assert max(range(4), key=side.__getitem__) == max(range(4), key=single.__getitem__)


def _largest_other_position(backend: LocalBackend) -> int:
    """The largest position any sequence but the prompt's holds (-1: none holds any)."""
    from llama_cpp import llama_cpp as lib

    memory = lib.llama_get_memory(backend._llama._ctx.ctx)
    return max(lib.llama_memory_seq_pos_max(memory, s) for s in range(1, backend._lanes + 1))
