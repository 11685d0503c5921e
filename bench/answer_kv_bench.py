"""Saved answer KV states against none, on the same prompts: how many greedy answers differ, and
how many are right each way, on both QA sets.

    python bench/answer_kv_bench.py

Builds the small tier's prompt for every grounded question of both QA sets exactly as the
service does (int8 query vector, top_k chunks, context assembly, evidence windows), then answers them
twice over in one sequence on a model with saved states (the second pass restores each prompt's
state) and once on a model without. Reuse that is exact changes nothing. Prints the figures last, in one plain line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from eval_bench import SETS, pydoc_corpus
from harness import ROOT, ingested_store

sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from smallfirst.service.llm.prompts import PassagePrompt

MAX_TOKENS = 80


def questions(name: str, corpus: Path, data_dir: Path) -> list[dict]:
    """Every grounded question of a QA set with what the service builds for it: ``evidence``, the
    sources' ``texts``, the small tier's ``prompt`` (int8 query vector, top_k chunks, context assembly,
    evidence windows), and the ``accepted`` answers."""
    from smallfirst.retrieval.context import assemble_context
    from smallfirst.retrieval.answer_evidence import answer_evidence
    from smallfirst.service.llm.prompts import evidence_passage_prompt

    settings, embedder, store, count = ingested_store(corpus, data_dir)
    out = []
    for row in (json.loads(line) for line in SETS[name].read_text().splitlines() if line.strip()):
        if row["kind"] != "grounded":
            continue
        hits = store.search(embedder.embed_query(row["question"]), settings.top_k)
        context = assemble_context(hits, settings.context_tokens, count, settings.min_score)
        evidence = answer_evidence(row["question"], context.sources, embedder.token_vectors)
        out.append({"question": row["question"], "evidence": evidence, "texts": [h.text for h in context.sources],
                    "prompt": evidence_passage_prompt(evidence, row["question"], settings.evidence_windows),
                    "accepted": row["answer_any"]})
    store.close()
    return out


def prompts(name: str, corpus: Path, data_dir: Path) -> list[tuple["PassagePrompt", list[str]]]:
    """The small tier's prompt for every grounded question of a QA set, with the accepted answers."""
    return [(q["prompt"], q["accepted"]) for q in questions(name, corpus, data_dir)]


async def answers(items: list[tuple["PassagePrompt", list[str]]], cache_bytes: int, passes: int = 1) -> list[list[str]]:
    """Every prompt answered ``passes`` times over, in order (a second pass restores saved states)."""
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.loading import bundled_model_path
    from smallfirst.service.llm.prompts import ANSWER_STOPS
    from smallfirst.service.scheduler import CpuScheduler, Priority

    scheduler = CpuScheduler()
    scheduler.start()
    model = await LocalBackend.load("small", bundled_model_path(), 2048, 0, scheduler, Priority.ANSWER, 32, 16, cache_bytes)
    out: list[list[str]] = []
    for _ in range(passes):
        out.append([])
        for prompt, _ in items:
            out[-1].append("".join([p async for p in model.stream(
                prompt.text, max_tokens=MAX_TOKENS, stop=ANSWER_STOPS, save_at=(len(prompt.text),),
                passages=prompt.passages)]))
    scheduler.stop()
    return out


def main() -> int:
    from smallfirst.service.tools.eval import _matches

    figures = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in ("docs", "pydoc"):
            corpus = ROOT / "docs" if name == "docs" else pydoc_corpus(tmp / "pydoc")
            items = prompts(name, corpus, tmp / name)
            first, again = asyncio.run(answers(items, 1 << 30, passes=2))  # room for every prompt's state
            without = asyncio.run(answers(items, 0))[0]
            figures[name] = {
                "prompts": len(items), "differ": sum(a != b for a, b in zip(first, without)),
                "differ_restored": sum(a != b for a, b in zip(again, without)),
                "right_with": sum(_matches(a, accepted) for a, (_, accepted) in zip(again, items)),
                "right_without": sum(_matches(b, accepted) for b, (_, accepted) in zip(without, items)),
            }
            f = figures[name]
            print(f"{name}: {f['prompts']} prompts; answers differing from a model without saved states: "
                  f"{f['differ']} on the first pass, {f['differ_restored']} on the second (every state restored); "
                  f"right: {f['right_without']} without, {f['right_with']} restored", flush=True)
    print("answer_kv " + " ".join(f"{n}_differ_first={f['differ']}/{f['prompts']} {n}_differ_restored={f['differ_restored']}/"
                                  f"{f['prompts']} {n}_right={f['right_without']}->{f['right_with']}"
                                  for n, f in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
