"""The autocomplete engine on the real small model: per-typist slots, prefix reuse counted in
evaluated tokens, supersession and cancellation within one step, batching, the baseline.

Thread checks are on (conftest): every model call made anywhere but the scheduler thread fails."""

from __future__ import annotations

import asyncio

import pytest

from smallfirst.service.autocomplete.engine import Autocompleter, Typist
from smallfirst.service.autocomplete.planner import PlannedRow
from smallfirst.service.autocomplete.runner import PrepareRequest, SlotRunner
from smallfirst.service.llm.base import GenerationStats
from smallfirst.service.llm.loading import bundled_model_path
from smallfirst.service.llm.slots import Row, SlotContext
from smallfirst.service.scheduler import Priority

pytestmark = pytest.mark.slow

TYPED = "The weather station on the hill records temperature and wind every ten minutes"


@pytest.fixture(scope="module")
def slots(scheduler):
    """The slot context, created on the scheduler thread, which alone may call into it."""
    context = asyncio.run(scheduler.run(Priority.CONTROL, SlotContext, bundled_model_path(), 4, 1024, 0))
    yield context
    asyncio.run(scheduler.run(Priority.CONTROL, context.close))


def clear_all(slots: SlotContext) -> None:
    for slot in range(slots.n_slots):
        slots.clear(slot)


@pytest.fixture
def engine(slots, scheduler):
    async def make(prefix_reuse: bool = True) -> Autocompleter:
        await scheduler.run(Priority.CONTROL, clear_all, slots)
        return Autocompleter(SlotRunner(slots), slots.n_slots, scheduler, None, context_tokens=120, min_score=0.2,
                             prefix_reuse=prefix_reuse)
    return make


async def suggest(engine: Autocompleter, typist: Typist, text: str, max_tokens: int = 4) -> tuple[str, GenerationStats, int]:
    """The suggestion, its stats, and the tokens the model evaluated for it."""
    before = engine.evaluated
    stats = GenerationStats()
    out = [p async for p in engine.suggest(typist, text, max_tokens, stats)]
    return "".join(out), stats, engine.evaluated - before


async def until(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``condition`` on the event loop until it holds; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_each_keystroke_evaluates_only_the_new_tokens(engine) -> None:
    async def scenario():
        ac = await engine()
        typist = ac.typist()
        results = [await suggest(ac, typist, TYPED[:i]) for i in range(40, len(TYPED) + 1, 3)]
        await ac.close()
        return results
    results = asyncio.run(scenario())
    _, cold, _ = results[0]
    assert cold.cached_tokens == 0
    for text, stats, evaluated in results[1:]:
        new = stats.prompt_tokens - stats.cached_tokens
        # Three more characters are one or two tokens, plus one when the old last token changed
        # (the tokenizer boundary): never the whole prompt again.
        assert new <= 3, (stats.prompt_tokens, stats.cached_tokens)  # none in the word the last one healed
        # Counted in the model: the new prompt tokens, then one per suggested token fed back.
        assert new <= evaluated <= new + stats.completion_tokens + 1


def test_a_keystroke_in_the_word_the_last_one_healed_takes_its_first_token_with_no_step(engine) -> None:
    """Typing on inside a word backs off to the same token boundary as the keystroke before: the
    slot kept the next-token scores there, so nothing of the prompt is evaluated again, and the
    suggestion is the one a cold prompt gets."""
    text = "The weather station on the hill records temperature and wi"

    async def scenario():
        ac = await engine()
        typist = ac.typist()
        await suggest(ac, typist, text[:-1], 6)
        reused = ac.reused
        warm = await suggest(ac, typist, text, 6)
        reused = ac.reused - reused
        await ac.close()
        cold_engine = await engine()
        cold = await suggest(cold_engine, cold_engine.typist(), text, 6)
        await cold_engine.close()
        return warm, reused, cold
    (warm_text, warm_stats, warm_evaluated), reused, (cold_text, cold_stats, cold_evaluated) = asyncio.run(scenario())
    assert reused == 1 and warm_stats.prompt_tokens == warm_stats.cached_tokens, warm_stats
    assert warm_text == cold_text and warm_text, (warm_text, cold_text)
    assert warm_evaluated == cold_evaluated - (cold_stats.prompt_tokens - cold_stats.cached_tokens)


def test_every_keystroke_inside_a_word_backs_off_to_the_word_start_with_no_step(engine) -> None:
    """The word being typed is taken off the prompt whole, also where the tokenizer splits it
    differently as it grows (" meas" + "u", " measure" + "m"): every keystroke after its first
    letter backs off to the word's start, where the slot kept the scores, and evaluates nothing
    before its first token; the last suggestion is the one a cold prompt gets."""
    text = "The weather station on the hill records temperature and wind "
    word = "measuremen"

    async def scenario():
        ac = await engine()
        typist = ac.typist()
        await suggest(ac, typist, text + word[0], 6)
        reused, uncached = ac.reused, []
        for end in range(2, len(word) + 1):
            warm, stats, _ = await suggest(ac, typist, text + word[:end], 6)
            uncached.append(stats.prompt_tokens - stats.cached_tokens)
        reused = ac.reused - reused
        await ac.close()
        cold_engine = await engine()
        cold, _, _ = await suggest(cold_engine, cold_engine.typist(), text + word, 6)
        await cold_engine.close()
        return reused, uncached, warm, cold
    reused, uncached, warm, cold = asyncio.run(scenario())
    assert reused == len(word) - 1 and not any(uncached), (reused, uncached)
    assert warm == cold and warm[:1].isalpha(), (warm, cold)


def test_a_word_is_never_spelled_from_a_lone_space(slots, scheduler) -> None:
    """The first token after a prompt healed inside a word starts with the word typed so far, or
    is the first piece the tokenizer cuts of it: never a lone space and then the word without its
    space, a split the tokenizer never makes (and one the model, so constrained, often picks).
    After a space, it is a word: never the lone space again."""
    runner = SlotRunner(slots)

    def first_tokens() -> list[tuple[bytes, bytes]]:
        clear_all(slots)
        out = []
        for text in ("The sch", "The scheduler r", "Retrieved documents are fenc", "the weather station on the hill",
                     "The scheduler runs every "):
            prepared = runner.prepare(PrepareRequest(0, (), text, 8, reuse=False))
            row = PlannedRow(0, 0, prepared.epoch, 0, prepared.tokens, True, decoding=False, heal=prepared.heal)
            (result,) = runner.step([row]).rows
            out.append((prepared.heal, result.piece))
        return out

    for heal, piece in asyncio.run(scheduler.run(Priority.CONTROL, first_tokens)):
        assert heal and piece.strip(), (heal, piece)
        assert piece.startswith(heal) or heal.startswith(piece), (heal, piece)


def test_a_prefix_longer_than_the_sliding_window_rolls_back_partway(slots, scheduler) -> None:
    """Gemma 3 attends over a 512-token window in most layers; the slot cache is full size, so a
    rollback keeps the prefix, and the next token is the same as after a cold evaluation."""
    text = " ".join(f"Reading {i}: the wind at the station was {i % 7} metres per second." for i in range(45))

    def scenario() -> tuple[int, int, int | None, int | None]:
        tokens = slots.tokenize(text, add_bos=True)
        clear_all(slots)
        for start in range(0, len(tokens), 48):
            slots.decode([Row(0, tokens[start:start + 48], False)])
        edited = tokens[:-3] + slots.tokenize(" 4 metres", add_bos=False)
        kept = slots.adopt(0, edited)
        warm = slots.decode([Row(0, edited[kept:], True)])[0]
        for start in range(0, len(edited), 48):  # the same text, cold, in another slot
            chunk = edited[start:start + 48]
            cold = slots.decode([Row(1, chunk, start + 48 >= len(edited))])[0]
        return len(tokens), kept, warm, cold
    length, kept, warm, cold = asyncio.run(scheduler.run(Priority.CONTROL, scenario))
    assert length > 700
    assert kept >= length - 4
    assert warm is not None and warm == cold


def test_typists_keep_their_own_slots(engine) -> None:
    other = "Our bakery sells rye bread, sourdough loaves and cinnamon rolls every morning"

    async def scenario():
        ac = await engine()
        a, b = ac.typist(), ac.typist()
        out = []
        for i in range(50, 60, 2):  # interleaved keystrokes of two typists
            out.append(await suggest(ac, a, TYPED[:i]))
            out.append(await suggest(ac, b, other[:i]))
        await ac.close()
        return a.slot, b.slot, out
    slot_a, slot_b, results = asyncio.run(scenario())
    assert slot_a != slot_b
    for _, stats, _ in results[2:]:
        assert stats.prompt_tokens - stats.cached_tokens <= 3  # neither evicts the other's prefix


def test_a_new_keystroke_stops_the_previous_suggestion_within_one_step(engine) -> None:
    async def scenario():
        ac = await engine()
        typist = ac.typist()
        await suggest(ac, typist, TYPED[:30])
        stats = GenerationStats()
        first = ac.suggest(typist, TYPED[:40], 16, stats)
        pieces = [await first.__anext__()]  # the first suggestion is streaming
        steps = ac.steps
        second = await suggest(ac, typist, TYPED[:41])  # supersedes it
        async for piece in first:
            pieces.append(piece)
        await ac.idle()
        await ac.close()
        return pieces, stats, second, ac.steps - steps
    pieces, stats, second, steps = asyncio.run(scenario())
    assert pieces and len(pieces) == 1  # nothing of the old suggestion after the new keystroke
    assert stats.finish == "cancelled" and stats.completion_tokens <= 2
    assert second[0] and second[1].finish in ("stop", "length")
    # The new suggestion's own steps (its prompt, then one a token after the first), plus at most
    # the one step of the old suggestion already in flight when the keystroke came.
    assert steps <= 1 + second[1].completion_tokens + 1, (steps, second[1])


def test_cancelling_a_cold_prefill_stops_it_between_steps(engine) -> None:
    long_text = " ".join(f"Entry {i} of the harbour log notes the tide and the boats that left." for i in range(40))

    async def scenario():
        ac = await engine()
        typist = ac.typist()
        stats = GenerationStats()
        before = ac.evaluated
        task = asyncio.ensure_future(_drain(ac.suggest(typist, long_text, 8, stats)))
        await until(lambda: ac.steps > 0, "the first prefill step")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.wait_for(ac.idle(), 60)  # a step already in flight may finish; nothing after it
        evaluated = ac.evaluated - before
        await ac.close()
        return stats, evaluated
    stats, evaluated = asyncio.run(scenario())
    assert stats.prompt_tokens > 250  # five or more steps of 48 when alone
    assert evaluated <= 2 * 48  # at most the step that ran and the one in flight, not the whole prompt
    assert stats.completion_tokens == 0


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def test_concurrent_typists_share_steps(engine) -> None:
    texts = [TYPED, "Our bakery sells rye bread and sourdough", "The chess club meets on Tuesday evenings", "Lava flows from the crater"]

    async def scenario():
        ac = await engine()
        typists = [ac.typist() for _ in texts]
        for t, text in zip(typists, texts):  # warm each slot
            await suggest(ac, t, text[:20])
        steps = ac.steps
        results = await asyncio.gather(*(suggest(ac, t, text[:24], max_tokens=6) for t, text in zip(typists, texts)))
        await ac.close()
        return results, ac.steps - steps
    results, steps = asyncio.run(scenario())
    tokens = sum(stats.completion_tokens for _, stats, _ in results)
    assert all(stats.finish in ("stop", "length") for _, stats, _ in results)
    assert steps < tokens  # several suggestions advanced in one model call


def test_the_baseline_setting_turns_reuse_off(engine) -> None:
    async def scenario():
        ac = await engine(prefix_reuse=False)
        typist = ac.typist()
        results = [await suggest(ac, typist, TYPED[:i]) for i in (40, 41, 42)]
        await ac.close()
        return results
    for _, stats, evaluated in asyncio.run(scenario()):
        assert stats.cached_tokens == 0 and evaluated >= stats.prompt_tokens


def test_the_next_text_window_is_prefilled_before_the_text_reaches_it(engine) -> None:
    """Long text is continued from a window whose start jumps ahead every 500 characters; the
    jump would re-evaluate the whole window on a keystroke, so it is prefilled in advance."""
    long_text = " ".join(f"Log line {i}: the tide at the harbour rose by {i % 9} centimetres." for i in range(30))
    assert len(long_text) > 1560

    async def scenario():
        ac = await engine()
        typist = ac.typist()
        results = []
        for length in range(1380, 1521, 10):  # a typist's pauses give the prefill its turn
            results.append((length, *(await suggest(ac, typist, long_text[:length]))))
            await asyncio.wait_for(ac.idle(), 60)
        await ac.close()
        return results
    results = asyncio.run(scenario())
    crossing = [(length, stats) for length, _, stats, _ in results if length > 1500]
    assert crossing
    length, stats = crossing[0]  # the first keystroke in the new window
    assert stats.prompt_tokens > 200
    assert stats.prompt_tokens - stats.cached_tokens <= 30, (length, stats)


def test_a_prompt_is_healed_to_a_token_boundary_after_a_space_and_inside_a_word(engine) -> None:
    """The typed text's unfinished last token is taken off the prompt and the suggestion spells
    it out first: after a space a new word starts, inside a word the word goes on; never a run
    of digits, never the typed text again."""
    async def scenario():
        ac = await engine()
        typist = ac.typist()
        after_space = await suggest(ac, typist, "The weather station on the hill records temperature and ", 6)
        inside_word = await suggest(ac, typist, "The weather station on the hill records temperature and wi", 6)
        await ac.close()
        return after_space, inside_word, ac.dropped
    (space_text, space_stats, _), (word_text, _, _), dropped = asyncio.run(scenario())
    assert space_text[:1].isalpha(), (space_text, space_stats)  # a new word, its space already typed
    assert word_text[:1].isalpha() and not word_text.startswith("wi"), word_text  # the word goes on
    for text in (space_text, word_text):
        assert any(ch.isalpha() for ch in text) and not any(ch.isdigit() for ch in text[:3]), text
    assert not dropped, dropped  # nothing needed dropping as junk


def test_text_typed_from_a_passage_gets_its_continuation_with_no_model_step(engine) -> None:
    from smallfirst.service.autocomplete.grounding import Grounding

    passage = ("The weather station on the hill records temperature and wind every ten minutes. "
               "Readings are sent to the harbour office by radio, where a keeper checks them each morning.")

    async def scenario():
        ac = await engine()
        typist = ac.typist()
        typist.grounding = Grounding("p1", "doc", "Station", 0, passage + "\n\n", (), passage)
        steps, evaluated = ac.steps, ac.evaluated
        copied = await suggest(ac, typist, "Every day the readings are sent to the harbour of", 8)
        after = (ac.steps - steps, ac.evaluated - evaluated, ac.copies)
        await ac.close()
        return copied, after
    (text, stats, _), (steps, evaluated, copies) = asyncio.run(scenario())
    assert text == "fice by radio,", text
    assert (steps, evaluated, copies) == (0, 0, 1)
    assert stats.completion_tokens == 0


def test_a_keystroke_takes_the_slot_of_a_background_prefill_when_every_slot_is_in_use(engine, slots, scheduler) -> None:
    """Grounding prefills fill every slot; a new typist's keystroke stops one of them and is
    served, instead of being refused as busy."""
    from smallfirst.service.autocomplete.grounding import Grounding

    passage = " ".join(f"Bay {i} of the depot stores {i * 3} crates of tinned fruit and spare rope." for i in range(12))

    async def scenario():
        ac = await engine()
        tokens = tuple(await scheduler.run(Priority.CONTROL, slots.tokenize, passage + "\n\n", True))
        grounding = Grounding("p1", "doc", "Depot", 0, passage + "\n\n", tokens, passage)
        prefilling = [ac._standby(ac.typist(), grounding, "The depot") for _ in range(slots.n_slots)]
        assert all(job is not None for job in prefilling)
        await until(lambda: all(job.prompt is not None for job in prefilling), "the prefills' preparation")
        assert not any(job.finished for job in prefilling)
        served = await suggest(ac, ac.typist(), TYPED[:40])
        await asyncio.wait_for(ac.idle(), 60)
        await ac.close()
        return served, [job.stats.finish for job in prefilling], ac.preempted
    (text, stats, _), finishes, preempted = asyncio.run(scenario())
    assert stats.finish in ("stop", "length") and text, (text, stats)
    assert preempted == 1 and finishes.count("cancelled") == 1 and finishes.count("stop") == len(finishes) - 1
