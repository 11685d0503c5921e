"""Saved KV states of answer-prompt prefixes: the byte-bounded LRU, and on the real model, that a
prompt starting with a saved prefix evaluates only the rest and answers as a cold prefill does."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from service.llm.base import GenerationStats
from service.llm.kv_cache import PrefixCache
from service.llm.local import LocalBackend, Tokenizer, bundled_model_path
from service.llm.prompts import ANSWER_STOPS, answer_prompt, answer_prompt_marks
from service.scheduler import CpuScheduler, Priority

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


def test_marks_fall_after_the_frame_the_first_source_and_all_sources() -> None:
    prompt = answer_prompt(MUSEUM, "When does the museum close?")
    frame, first, everything = answer_prompt_marks(MUSEUM)
    assert prompt[:frame].endswith("Sources:\n<<<\n") and prompt[frame:].startswith("[1] Harbor")
    assert prompt[:first].endswith("April to October. Tickets cost 6 euros.")
    assert prompt[:everything].endswith("pier 3.") and prompt[everything:].startswith("\n>>>\nQuestion:")


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
    pieces = [p async for p in model.stream(answer_prompt(sources, question), max_tokens=24, stop=ANSWER_STOPS,
                                            stats=stats, save_at=answer_prompt_marks(sources))]
    return "".join(pieces), model.prefilled_tokens - before, stats


def test_a_repeated_prompt_prefills_only_its_question_and_answers_the_same(backends) -> None:
    cached, plain = backends
    question = "When does the museum close?"

    async def scenario(model: LocalBackend) -> list[tuple[str, int, GenerationStats]]:
        first = await answer(model, MUSEUM, question)
        await answer(model, BREAD, "How long should the dough be kneaded?")  # the KV now holds other sources
        return [first, await answer(model, MUSEUM, question)]

    (cold_text, cold_prefill, cold_stats), (again_text, again_prefill, again_stats) = asyncio.run(scenario(cached))
    assert again_text == cold_text and "17:00" in cold_text
    question_tokens = again_stats.prompt_tokens - again_stats.cached_tokens
    assert again_prefill == question_tokens - 1  # the last prompt token is evaluated by the first step
    assert again_stats.cached_tokens > cold_stats.prompt_tokens - 20 and question_tokens < 20
    assert cold_prefill == cold_stats.prompt_tokens - 1 - cold_stats.cached_tokens
    # Without saved states only the frame is shared with the prompt in the KV: the sources are prefilled again.
    (_, _, _), (plain_text, plain_prefill, _) = asyncio.run(scenario(plain))
    assert plain_text == cold_text and plain_prefill > 5 * again_prefill


def test_a_new_question_reuses_the_saved_sources_it_shares(backends) -> None:
    cached, _ = backends
    other = MUSEUM.split("\n\n")[0] + "\n\n[2] Bus › Timetable\nThe number 7 bus stops at the lighthouse every hour."
    count = Tokenizer(bundled_model_path()).count

    def tokens_through(sources: str, mark: int) -> int:
        return count(answer_prompt(sources, "x")[: answer_prompt_marks(sources)[mark]]) + 1  # + BOS

    async def scenario() -> tuple[GenerationStats, GenerationStats]:
        await answer(cached, MUSEUM, "When does the museum close?")
        await answer(cached, BREAD, "How long should the dough be kneaded?")
        bus = (await answer(cached, other, "How often does the bus stop at the lighthouse?"))[2]
        return bus, (await answer(cached, BREAD, "When should roses be pruned?"))[2]

    bus, roses = asyncio.run(scenario())
    # MUSEUM's first source block is restored for a prompt that starts with it (a merge of the
    # boundary's tokens may cost one), not only the frame that every prompt shares.
    assert bus.cached_tokens >= tokens_through(MUSEUM, 1) - 1 > tokens_through(MUSEUM, 0) + 10
    # BREAD's sources were saved whole on its first use: a new question on them prefills itself only.
    assert roses.cached_tokens >= tokens_through(BREAD, 2) - 1
    assert cached.prefixes is not None and 0 < cached.prefixes.bytes <= cached.prefixes.budget_bytes
