"""Saved KV states of answer prompts: the byte-bounded LRU, and on the real model, that a repeated
prompt restores its state, prefills nothing and answers exactly as its first prefill did."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from smallfirst.service.llm.base import GenerationStats
from smallfirst.service.llm.kv_cache import PrefixCache
from smallfirst.service.llm.local import LocalBackend
from smallfirst.service.llm.loading import bundled_model_path
from smallfirst.service.llm.prompts import ANSWER_STOPS, answer_prompt, passage_prompt
from smallfirst.service.scheduler import CpuScheduler, Priority

MUSEUM = ("[1] Harbor Lighthouse › Visiting\nThe lighthouse museum opens at 9:00 and closes at 17:00 from April to "
          "October. Tickets cost 6 euros.\n\n[2] Ferry › Timetable\nThe harbor ferry leaves every 40 minutes from pier 3.")
BREAD = ("[1] Cooking › Bread\nKnead the dough for ten minutes, then let it rest for an hour in a warm place.\n\n"
         "[2] Garden › Roses\nPrune roses in late winter, just above an outward-facing bud.")


def test_the_longest_stored_prefix_wins() -> None:
    cache = PrefixCache(1000)
    cache.put([1, 2], b"ab")
    cache.put([1, 2, 3, 4], b"abcd")
    cache.put([9, 9, 9], b"zzz")
    assert cache.longest([1, 2, 3, 4, 5], longer_than=0, at_most=4) == (4, b"abcd")
    assert cache.longest([1, 2, 3, 4, 5], longer_than=0, at_most=3) == (2, b"ab")
    assert cache.longest([1, 2, 3, 4, 5], longer_than=2, at_most=3) is None  # nothing beats what is in the KV
    assert cache.longest([1, 3], longer_than=0, at_most=9) is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_the_cache_stays_within_its_byte_budget_least_recently_used_first() -> None:
    cache = PrefixCache(100)
    for i in range(10):
        cache.put([i, i], bytes(30))
        assert cache.bytes <= 100
    assert len(cache) == 3 and cache.holds([9, 9]) and not cache.holds([6, 6])
    assert cache.longest([7, 7, 1], longer_than=0, at_most=3) == (2, bytes(30))  # 7 is now the most recent
    cache.put([10, 10], bytes(30))
    assert cache.holds([7, 7]) and not cache.holds([8, 8])
    cache.put([11], bytes(101))  # larger than the whole budget: refused, nothing evicted
    assert not cache.holds([11]) and len(cache) == 3


@pytest.fixture(scope="module")
def backends(scheduler: CpuScheduler) -> Iterator[tuple[LocalBackend, LocalBackend]]:
    async def load() -> tuple[LocalBackend, LocalBackend]:
        path = bundled_model_path()
        return (await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 64 << 20),
                await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 0))
    yield asyncio.run(load())


async def answer(model: LocalBackend, sources: str, question: str) -> tuple[str, int, GenerationStats]:
    """The greedy answer, the prompt tokens that prefill evaluated, and the stats."""
    stats = GenerationStats()
    before = model.prefilled_tokens
    prompt = answer_prompt(sources, question)
    pieces = [p async for p in model.stream(prompt, max_tokens=24, stop=ANSWER_STOPS, stats=stats, save_at=(len(prompt),))]
    return "".join(pieces), model.prefilled_tokens - before, stats


@pytest.mark.slow
def test_a_repeated_prompt_prefills_nothing_and_answers_the_same(backends) -> None:
    cached, plain = backends
    question = "When does the museum close?"

    async def scenario(model: LocalBackend) -> list[tuple[str, int, GenerationStats]]:
        first = await answer(model, MUSEUM, question)
        await answer(model, BREAD, "How long should the dough be kneaded?")  # the KV now holds another prompt
        return [first, await answer(model, MUSEUM, question)]

    (cold_text, cold_prefill, cold_stats), (again_text, again_prefill, again_stats) = asyncio.run(scenario(cached))
    assert again_text == cold_text and "17:00" in cold_text
    assert again_prefill == 0 and again_stats.cached_tokens == again_stats.prompt_tokens - 1
    assert cold_prefill == cold_stats.prompt_tokens - 1 - cold_stats.cached_tokens > 50
    # Without saved states only the frame is shared with the prompt in the KV: the sources are prefilled again.
    (_, _, _), (plain_text, plain_prefill, plain_stats) = asyncio.run(scenario(plain))
    assert plain_text == cold_text and plain_prefill == plain_stats.prompt_tokens - 1 - plain_stats.cached_tokens > 50


@pytest.mark.slow
def test_new_prompts_answer_exactly_as_without_saved_states(backends) -> None:
    """Saving never cuts a prefill into other batches than it would have had (llama.cpp's results
    depend slightly on the cut), so prompts that restore nothing come out the same to the token."""
    cached, plain = backends
    questions = [(MUSEUM, "How often does the ferry leave?"), (BREAD, "When should roses be pruned?"),
                 (MUSEUM, "How much is a ticket?"), (BREAD, "How long does the dough rest?")]

    async def scenario(model: LocalBackend) -> list[tuple[str, int]]:
        await answer(model, "[1] Weather\nIt rains.", "Does it rain?")  # both start from the same KV contents
        return [(text, stats.cached_tokens) for text, _, stats in [await answer(model, *q) for q in questions]]

    with_states, without = asyncio.run(scenario(cached)), asyncio.run(scenario(plain))
    assert with_states == without
    assert cached.prefixes is not None and 0 < cached.prefixes.bytes <= cached.prefixes.budget_bytes


LIGHTHOUSE = "[1] Harbor Lighthouse › Visiting\n" \
    "The lighthouse museum opens at 9:00 and closes at 17:00 from April to October. Tickets cost 6 euros."
FERRY = "[2] Ferry › Timetable\nThe harbor ferry leaves every 40 minutes from pier 3."


async def passage_answer(model: LocalBackend, blocks: list[str], question: str) -> tuple[str, int, GenerationStats]:
    """:func:`answer` on a prompt whose source blocks are passages."""
    stats = GenerationStats()
    before = model.prefilled_tokens
    prompt = passage_prompt(blocks, question)
    pieces = [p async for p in model.stream(prompt.text, max_tokens=24, stop=ANSWER_STOPS, stats=stats,
                                            save_at=(len(prompt.text),), passages=prompt.passages)]
    return "".join(pieces), model.prefilled_tokens - before, stats


def test_a_passage_prompt_spans_its_source_blocks() -> None:
    prompt = passage_prompt([LIGHTHOUSE, FERRY], "How often does the ferry leave?")
    (a, b), (c, d) = prompt.passages
    assert prompt.text == answer_prompt(LIGHTHOUSE + "\n\n" + FERRY, "How often does the ferry leave?")
    assert prompt.text[a:b] == LIGHTHOUSE + "\n\n" and b == c and prompt.text[c:d] == FERRY
    assert prompt.text[:a].endswith("<<<\n") and prompt.text[d:].startswith("\n>>>\nQuestion:")


@pytest.mark.slow
def test_a_cached_passage_is_not_evaluated_again_and_answers_as_a_cold_prefill(backends, scheduler) -> None:
    """Another question on the same source evaluates only the tokens after the passage, once the
    passage's state is saved, and answers exactly as a model that never saw the passage."""
    cached, plain = backends
    question = "How much is a ticket?"
    prompt = passage_prompt([LIGHTHOUSE], question)
    tail = prompt.text[prompt.passages[-1][1]:]
    tail_tokens = len(asyncio.run(scheduler.run(Priority.CONTROL, cached._tokenize, tail, ()))[0]) - 1  # less the BOS

    async def warm_then_ask() -> tuple[str, int, GenerationStats]:
        await passage_answer(cached, [LIGHTHOUSE], "When does the museum close?")
        await passage_answer(cached, [BREAD], "How long should the dough be kneaded?")  # the KV now holds another prompt
        return await passage_answer(cached, [LIGHTHOUSE], question)

    async def cold() -> tuple[str, int, GenerationStats]:
        await passage_answer(plain, [BREAD], "How long should the dough be kneaded?")  # the frame is in the KV
        return await passage_answer(plain, [LIGHTHOUSE], question)

    text, prefilled, stats = asyncio.run(warm_then_ask())
    cold_text, cold_prefilled, cold_stats = asyncio.run(cold())
    assert text == cold_text and "6 euros" in text
    assert prefilled == tail_tokens - 1  # the tail's last token is evaluated by the step that samples
    assert cold_prefilled - prefilled == stats.cached_tokens - cold_stats.cached_tokens > 30  # the passage itself


CODE = ("[2] Vault › Access\nThe vault under the old bank opens only on weekdays, from ten to four. "
        "Its secret access code is 4417, and the guard changes it every spring.")
DUCKS = "[1] Pond › Wildlife\nSeven ducks and two herons live at the pond all year."


@pytest.fixture(scope="module")
def assembling(scheduler: CpuScheduler) -> Iterator[LocalBackend]:
    yield asyncio.run(LocalBackend.load("small", bundled_model_path(), 2048, 0, scheduler, Priority.ANSWER, 32, 16,
                                        64 << 20, assemble=True))


@pytest.mark.slow
def test_a_passage_saved_elsewhere_is_shifted_into_place_and_answers_as_a_cold_prefill(assembling, backends) -> None:
    """A passage first evaluated right after the frame, then placed after another source in a new
    prompt (its cells shifted there), is not evaluated again but for its first few tokens, and
    the answer to a question that only it answers is the one a cold prefill gives."""
    plain = backends[1]
    question = "What is the vault's secret access code?"

    async def scenario() -> tuple[tuple[str, int, GenerationStats], tuple[str, int, GenerationStats]]:
        await passage_answer(assembling, [CODE], "Where is the vault?")  # the passage's cells saved at 129..
        placed_before = assembling.assembled_tokens
        shifted = await passage_answer(assembling, [DUCKS, CODE], question)  # ... and placed after DUCKS
        assert assembling.assembled_tokens - placed_before > 5
        await passage_answer(plain, [BREAD], "How long should the dough be kneaded?")
        return shifted, await passage_answer(plain, [DUCKS, CODE], question)

    (text, prefilled, stats), (cold_text, cold_prefilled, cold_stats) = asyncio.run(scenario())
    assert "4417" in cold_text and text == cold_text
    assert stats.cached_tokens - cold_stats.cached_tokens == cold_prefilled - prefilled > 5  # the passage's rest


@pytest.mark.slow
def test_a_state_that_fails_to_restore_is_evaluated_again_from_the_start(backends) -> None:
    """A saved state llama.cpp refuses (here one damaged on purpose, as no real state can be made
    to fail) costs a full prefill, never an answer computed over a KV cache it emptied."""
    cached, plain = backends
    question = "When does the museum close?"

    async def scenario() -> tuple[tuple[str, int, GenerationStats], tuple[str, int, GenerationStats]]:
        await answer(cached, MUSEUM, question)
        assert cached.prefixes is not None
        for key in list(cached.prefixes._entries):
            cached.prefixes._entries[key] = b"\x00" * 16  # no longer a state llama.cpp can read
        await answer(cached, BREAD, "How long should the dough be kneaded?")  # the frame stays in the KV
        await answer(plain, BREAD, "How long should the dough be kneaded?")
        return await answer(cached, MUSEUM, question), await answer(plain, MUSEUM, question)

    (text, prefilled, stats), (cold_text, cold_prefilled, _) = asyncio.run(scenario())
    assert text == cold_text and "17:00" in text
    assert stats.cached_tokens == 0 and prefilled == stats.prompt_tokens - 1


@pytest.mark.slow
def test_no_state_is_restored_that_ends_inside_a_passage(backends) -> None:
    """A passage that begins with a whole passage seen before (its text extended) is evaluated
    from its start: the state saved at the shorter one's end would cut it into other steps."""
    cached, plain = backends
    longer = LIGHTHOUSE + " Guided tours start at noon and last an hour."

    async def scenario() -> tuple[GenerationStats, GenerationStats]:
        await passage_answer(cached, [LIGHTHOUSE], "When does the museum close?")  # saved at LIGHTHOUSE's end
        await passage_answer(cached, [BREAD], "How long should the dough be kneaded?")
        await passage_answer(plain, [BREAD], "How long should the dough be kneaded?")
        return (await passage_answer(cached, [longer], "When do guided tours start?"))[2], \
            (await passage_answer(plain, [longer], "When do guided tours start?"))[2]

    stats, cold_stats = asyncio.run(scenario())
    assert stats.cached_tokens == cold_stats.cached_tokens  # the frame alone
