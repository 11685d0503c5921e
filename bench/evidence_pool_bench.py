"""Evidence from all eight retrieved chunks against evidence from the chunks that fit the context, in one run.

    python bench/evidence_pool_bench.py [--store-cache DIR]

For every grounded question of both QA sets, builds the small tier's prompt two ways: *fit*, as
the service did before (top 4 distinct chunks, evidence sentences only from those whose whole
chunk fits ``SMALLFIRST_CONTEXT_TOKENS``, ranked without their chunk's search score), and *pool*,
as it does now (top ``SMALLFIRST_TOP_K`` = 8, every chunk's sentences, the chunk's score weighing
in, and for a question that asks for a name the sentences that give one first). Two models, each with the service's answer KV cache, get the questions in the same order and
take turns on each; the time is the first token of a greedy answer (prefill included). Also
counts the prompts' tokens and where the first accepted answer string stands among the ranked
evidence sentences. Prints the figures last, in one plain line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

from eval_bench import SETS, qa_corpora, store_cache_parser
from harness import ROOT, ingested_store

sys.path.insert(0, str(ROOT))

FIT_TOP_K = 4


@contextlib.contextmanager
def as_before(before: bool) -> Iterator[None]:
    """Evidence ranked and shown as before, inside the block: no chunk score in a sentence's, and
    the prompt's source blocks with whole titles and whole breadcrumb labels."""
    import smallfirst.retrieval.evidence as evidence_module

    saved = evidence_module.CHUNK_WEIGHT, evidence_module.prompt_title, evidence_module.prompt_label
    if before:
        evidence_module.CHUNK_WEIGHT = 0.0
        evidence_module.prompt_title = lambda title, suffix: " ".join(title.split())  # type: ignore[assignment]
        evidence_module.prompt_label = lambda label: label  # type: ignore[assignment]
    try:
        yield
    finally:
        evidence_module.CHUNK_WEIGHT, evidence_module.prompt_title, evidence_module.prompt_label = saved


def prompts(name: str, corpus: Path, data_dir: Path) -> list[dict]:
    """Both prompts of every grounded question, with the rank of its answer in each evidence list."""
    import smallfirst.retrieval.evidence as evidence_module
    from smallfirst.retrieval.context import assemble_context
    from smallfirst.retrieval.expectation import names_first
    from smallfirst.service.llm.prompts import evidence_passage_prompt

    settings, embedder, store, count = ingested_store(corpus, data_dir)
    out = []
    try:
        for row in (json.loads(line) for line in SETS[name].read_text().splitlines() if line.strip()):
            if row["kind"] != "grounded":
                continue
            question, vector = row["question"], embedder.embed_query(row["question"])
            item: dict = {"accepted": [" ".join(a.lower().split()) for a in row["answer_any"]]}
            for way, top_k in (("fit", FIT_TOP_K), ("pool", settings.top_k)):
                context = assemble_context(store.search(vector, top_k), settings.context_tokens, count, settings.min_score)
                sources = context.sources
                if way == "fit":  # only the chunks whose whole text is in the context, as before
                    sources = tuple(h for i, h in enumerate(sources) if re.search(rf"^\[{i + 1}\] ", context.text, re.M))
                with as_before(way == "fit"):
                    found = evidence_module.find_evidence(question, sources, embedder.token_vectors)
                    if way == "pool":
                        found = names_first(question, found)
                    prompt = evidence_passage_prompt(found, question, settings.evidence_windows)
                rank = next((i for i, ev in enumerate(found.ranked) if any(
                    a in " ".join(f"{ev.sentence.label} {ev.text}".lower().split()) for a in item["accepted"])), None)
                item[way] = {"prompt": prompt, "tokens": count(prompt.text), "rank": rank}
            out.append(item)
    finally:
        store.close()
    return out


async def first_tokens(items: list[dict]) -> dict[str, list[float]]:
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.loading import bundled_model_path
    from smallfirst.service.scheduler import CpuScheduler, Priority
    from smallfirst.settings import Settings

    settings = Settings.load({})
    scheduler = CpuScheduler()
    scheduler.start()
    path, cache = bundled_model_path(), int(settings.answer_kv_cache_mb * 1024 * 1024)
    models = {way: await LocalBackend.load("small", path, settings.answer_ctx, 0, scheduler, Priority.ANSWER,
                                           settings.prefill_step_tokens, 16, cache) for way in ("fit", "pool")}
    out: dict[str, list[float]] = {"fit": [], "pool": []}
    try:
        for i, item in enumerate(items):
            for way in (("fit", "pool") if i % 2 == 0 else ("pool", "fit")):
                prompt = item[way]["prompt"]
                started = time.perf_counter()
                async for _ in models[way].stream(prompt.text, max_tokens=1, passages=prompt.passages):
                    break
                out[way].append((time.perf_counter() - started) * 1000)
    finally:
        scheduler.stop()
    return out


def main() -> int:
    args = store_cache_parser(__doc__).parse_args()
    line = []
    with qa_corpora(args.store_cache) as sets:
        for name, corpus, data_dir in sets:
            items = prompts(name, corpus, data_dir)
            times = asyncio.run(first_tokens(items))
            figures = {}
            for way in ("fit", "pool"):
                ranks = [item[way]["rank"] for item in items]
                figures[way] = (statistics.median(times[way]), statistics.median(item[way]["tokens"] for item in items),
                                sum(r is not None and r < 1 for r in ranks), sum(r is not None and r < 3 for r in ranks))
                print(f"{name} {way}: first token p50 {figures[way][0]:.0f} ms, prompt {figures[way][1]:.0f} tokens p50, "
                      f"answer in the top evidence sentence {figures[way][2]}/{len(items)}, in the top 3 {figures[way][3]}/{len(items)}")
            fit, pool = figures["fit"], figures["pool"]
            line.append(f"{name}: ttft_p50_ms fit={fit[0]:.0f} pool={pool[0]:.0f} ratio={pool[0] / fit[0]:.2f} "
                        f"tokens_p50 {fit[1]:.0f}->{pool[1]:.0f} top1 {fit[2]}->{pool[2]} top3 {fit[3]}->{pool[3]}")
    print(" | ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
