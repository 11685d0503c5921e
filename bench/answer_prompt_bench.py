"""The small tier's answer now against the whole-chunk prompt it replaced, on the same questions, in one run.

    python bench/answer_prompt_bench.py [--store-cache DIR]

For every grounded question of both QA sets, the small model answers two ways:

- *chunks*, the prompt before evidence: the 4 best chunks, each whole while they fit
  ``SMALLFIRST_CONTEXT_TOKENS``, numbered from 1 in the same few-shot frame, answered greedily;
- *evidence*, as the service answers now: evidence sentences from the ``SMALLFIRST_TOP_K`` best
  chunks (name-giving sentences first for a question that asks for a name), the best
  ``SMALLFIRST_EVIDENCE_WINDOWS`` of them in the frame, and the name chosen among the options the
  evidence gives, or else a greedy answer.

Both run on today's engine, as the service would run either: greedy, with source blocks as
passages under the service's answer KV cache, one model each. The two take turns on each question.
The first token is what a user waits for after the search: the prompt's assembly counts (the whole
chunks' token counts, or the evidence scoring), and so does the options' scoring where the question
asks for a name. An answer is right when it holds one of the question's accepted strings, as in
``smallfirst eval``; the right ones are also counted among the questions that ask for a name.
Prints the figures last, in one plain line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

from eval_bench import SETS, qa_corpora, store_cache_parser
from harness import ROOT, answer_model, ingested_store

sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from smallfirst.retrieval.store import Hit

CHUNKS_TOP_K = 4  # chunks the answer prompt held before evidence
WAYS = ("chunks", "evidence")


class Figures(NamedTuple):
    first_ms: float  # first token p50
    tokens: float  # prompt tokens p50
    right: int
    right_named: int  # right among the questions that ask for a name


def whole_chunks(hits: Sequence[Hit], budget_tokens: int, count: Callable[[str], int], min_score: float) -> list[str]:
    """The source blocks of the prompt before evidence: the hits best first, without duplicates or
    low scores, each whole while the blocks fit the budget (one that does not is skipped), numbered
    from 1 among those that fit."""
    from smallfirst.retrieval.context import format_source

    blocks: list[str] = []
    seen: set[str] = set()
    used = 0
    for hit in sorted(hits, key=lambda h: h.score, reverse=True):
        key = " ".join(hit.text.split())
        if hit.score < min_score or not key or key in seen:
            continue
        block = format_source(len(blocks) + 1, hit)
        cost = count(block + "\n\n")
        if used + cost > budget_tokens:
            continue
        seen.add(key)
        blocks.append(block)
        used += cost
    return blocks


def prompts(name: str, corpus: Path, data_dir: Path) -> list[dict]:
    """Both prompts of every grounded question, with the evidence way's name options and the time
    its evidence took."""
    from smallfirst.retrieval.context import assemble_context
    from smallfirst.retrieval.answer_evidence import answer_evidence
    from smallfirst.retrieval.expectation import answer_phrase, expected, name_options
    from smallfirst.service.llm.prompts import evidence_passage_prompt, passage_prompt

    settings, embedder, store, count = ingested_store(corpus, data_dir)
    out = []
    try:
        for row in (json.loads(line) for line in SETS[name].read_text().splitlines() if line.strip()):
            if row["kind"] != "grounded":
                continue
            question, vector = row["question"], embedder.embed_query(row["question"])
            item: dict = {"accepted": row["answer_any"]}
            hits = store.search(vector, CHUNKS_TOP_K)
            started = time.perf_counter()
            prompt = passage_prompt(whole_chunks(hits, settings.context_tokens, count, settings.min_score), question)
            item["chunks"] = {"prompt": prompt, "grounding_ms": (time.perf_counter() - started) * 1000, "options": []}
            hits = assemble_context(store.search(vector, settings.top_k), settings.context_tokens, count,
                                    settings.min_score).sources
            started = time.perf_counter()
            found = answer_evidence(question, hits, embedder.token_vectors)
            expectation = expected(question) if settings.answer_name_choice else None
            options = name_options(question, expectation, found.ranked, "\n".join(h.text for h in found.hits)) \
                if expectation is not None else []
            prompt = evidence_passage_prompt(found, question, settings.evidence_windows)
            item["evidence"] = {"prompt": prompt, "grounding_ms": (time.perf_counter() - started) * 1000,
                                "options": [(f"{answer_phrase(n, expectation)} [{s + 1}].", n)
                                            for n, s in options] if expectation is not None else []}
            for way in WAYS:
                item[way]["tokens"] = count(item[way]["prompt"].text)
            out.append(item)
    finally:
        store.close()
    return out


async def answers(items: list[dict]) -> None:
    """Each way's answer and its first-token time, into ``item[way]``."""
    from smallfirst.service.llm.prompts import ANSWER_STOPS
    from smallfirst.service.scheduler import CpuScheduler
    from smallfirst.settings import Settings

    settings = Settings.load({})
    scheduler = CpuScheduler()
    scheduler.start()
    models = {way: await answer_model(scheduler, settings) for way in WAYS}
    try:
        for i, item in enumerate(items):
            for way in (WAYS if i % 2 == 0 else WAYS[::-1]):
                prompt, options, model = item[way]["prompt"], item[way]["options"], models[way]
                started = time.perf_counter() - item[way]["grounding_ms"] / 1000
                if options:
                    best = await model.choose(prompt.text, [n for _, n in options], passages=prompt.passages)
                    item[way]["first_ms"] = (time.perf_counter() - started) * 1000
                    item[way]["answer"] = options[best][0]
                    continue
                text = []
                async for token in model.stream(prompt.text, max_tokens=settings.answer_max_tokens, stop=ANSWER_STOPS,
                                                temperature=0.0, passages=prompt.passages):
                    if not text:
                        item[way]["first_ms"] = (time.perf_counter() - started) * 1000
                    text.append(token)
                item[way].setdefault("first_ms", (time.perf_counter() - started) * 1000)
                item[way]["answer"] = "".join(text)
    finally:
        scheduler.stop()


def main() -> int:
    from smallfirst.service.tools.eval import _matches

    args = store_cache_parser(__doc__).parse_args()
    line = []
    with qa_corpora(args.store_cache) as sets:
        for name, corpus, data_dir in sets:
            items = prompts(name, corpus, data_dir)
            asyncio.run(answers(items))
            named = [item for item in items if item["evidence"]["options"]]
            figures = {}
            for way in WAYS:
                figures[way] = Figures(statistics.median(item[way]["first_ms"] for item in items),
                                       statistics.median(item[way]["tokens"] for item in items),
                                       sum(_matches(item[way]["answer"], item["accepted"]) for item in items),
                                       sum(_matches(item[way]["answer"], item["accepted"]) for item in named))
                print(f"{name} {way}: first token p50 {figures[way].first_ms:.0f} ms, prompt {figures[way].tokens:.0f} "
                      f"tokens p50, answers right {figures[way].right}/{len(items)}, "
                      f"of the name questions {figures[way].right_named}/{len(named)}")
            before, now = figures["chunks"], figures["evidence"]
            line.append(f"{name}: ttft_p50_ms chunks={before.first_ms:.0f} evidence={now.first_ms:.0f} "
                        f"ratio={now.first_ms / before.first_ms:.2f} tokens_p50 {before.tokens:.0f}->{now.tokens:.0f} "
                        f"right {before.right}->{now.right}/{len(items)} "
                        f"names {before.right_named}->{now.right_named}/{len(named)}")
    print(" | ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
