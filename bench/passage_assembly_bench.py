"""Assembled passages against full prefill: how far the answer model's predictions move when a
prompt's later passages are placed from states computed after other text, on both QA sets.

    python bench/passage_assembly_bench.py [--recompute 16]

Builds the small tier's prompt for every grounded question of both QA sets exactly as the
service does. Only prompts with two or more passages can be assembled (the first passage follows
the fixed frame, so its saved state is exact). For each of them:

- full prefill: a model without saved states evaluates the whole prompt, then decodes greedily;
- assembled: a model with ``assemble`` first evaluates each later passage alone, right after the
  frame (as a question about that source alone would), then answers the prompt, placing those
  passages shifted from their saved cells;
- noise: a third model evaluates the prompt in one piece (steps cut elsewhere), the size of the
  differences llama.cpp's batching alone makes.

Reports the KL divergence of the first answer token's distribution from full prefill's,
teacher-forced agreement (the share of full prefill's greedy answer tokens that each model
also ranks first, fed that same answer), and greedy answers right. Prints the figures last, in
one plain line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from answer_kv_bench import prompts
from eval_bench import pydoc_corpus
from harness import ROOT

sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.prompts import PassagePrompt

ANSWER_TOKENS = 32


def walk(model: "LocalBackend", tokens: Sequence[int], follow: Sequence[int] | None) -> tuple[Any, list[int]]:
    """On the scheduler thread, the prompt evaluated: the first answer token's log-probabilities
    and the model's top token at each step, fed ``follow`` (or its own top tokens)."""
    from llama_cpp import llama_cpp as lib

    from smallfirst.service.llm.option_scoring import next_logprobs

    logprobs = model._last_logprobs(tokens)
    first = logprobs.copy()
    tops: list[int] = []
    for i in range(ANSWER_TOKENS if follow is None else len(follow)):
        tops.append(int(logprobs.argmax()))
        token = tops[-1] if follow is None else follow[i]
        if lib.llama_vocab_is_eog(model._llama._model.vocab, token):
            break
        model._llama.eval([token])
        logprobs = next_logprobs(model._llama)
    return first, tops


async def trace(model: "LocalBackend", prompt: "PassagePrompt", follow: Sequence[int] | None = None,
                passages: bool = True) -> tuple[Any, list[int]]:
    from smallfirst.service.llm.base import GenerationStats
    from smallfirst.service.scheduler import Priority

    run = model._scheduler.run
    async with model.queue.turn(GenerationStats(), None) as turn:
        spans = prompt.passages if passages else ()
        tokens, cached, saves, pieces = await run(Priority.ANSWER, model._prepare, prompt.text, ANSWER_TOKENS, (), spans)
        await model._prefill(turn, tokens, cached, saves, pieces)
        return await run(Priority.ANSWER, walk, model, tokens, follow)


def kl(p_log: Any, q_log: Any) -> float:
    import numpy as np

    p = np.exp(p_log)
    return float((p * (p_log - q_log)).sum())


async def measure(items: list[tuple["PassagePrompt", list[str]]]) -> dict[str, list]:
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.loading import bundled_model_path
    from smallfirst.service.llm.prompts import ANSWER_STOPS, passage_prompt
    from smallfirst.service.scheduler import CpuScheduler, Priority
    from smallfirst.service.tools.eval import _matches

    scheduler = CpuScheduler()
    scheduler.start()
    path = bundled_model_path()
    full = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 0)
    whole = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 0)
    assembling = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 1 << 30,
                                         assemble=True)

    def text(tokens: list[int]) -> str:
        out = full._llama.detokenize(tokens).decode("utf-8", errors="replace")
        cut = min([out.find(stop) for stop in ANSWER_STOPS if stop in out], default=len(out))
        return out[:cut]

    out: dict[str, list] = {"kl": [], "kl_noise": [], "agree": [], "agree_noise": [], "right_full": [],
                            "right_assembled": [], "placed": []}
    try:
        for prompt, accepted in items:
            question = prompt.text.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")
            blocks = [prompt.text[a:b].removesuffix("\n\n") for a, b in prompt.passages]
            for i, block in enumerate(blocks[1:], 1):  # a passage ends in a blank line unless it is the last
                alone = [block] if i == len(blocks) - 1 else [block, "[9] Notes\nNothing else."]
                await trace(assembling, passage_prompt(alone, question), follow=[])
            first, tops = await trace(full, prompt)
            placed = assembling.assembled_tokens
            first_a, tops_a = await trace(assembling, prompt, follow=tops)
            out["placed"].append(assembling.assembled_tokens - placed)
            first_n, tops_n = await trace(whole, prompt, follow=tops, passages=False)
            out["kl"].append(kl(first, first_a))
            out["kl_noise"].append(kl(first, first_n))
            out["agree"].append(statistics.mean(a == b for a, b in zip(tops, tops_a)) if tops else 1.0)
            out["agree_noise"].append(statistics.mean(a == b for a, b in zip(tops, tops_n)) if tops else 1.0)
            _, own = await trace(assembling, prompt)  # its own greedy answer, on the same assembled cells
            out["right_full"].append(_matches(text(tops), accepted))
            out["right_assembled"].append(_matches(text(own), accepted))
    finally:
        scheduler.stop()
    return out


def main() -> int:
    from smallfirst.service.llm import local

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recompute", type=int, default=local.RECOMPUTE_TOKENS,
                        help="first tokens of each placed passage evaluated again in place")
    local.RECOMPUTE_TOKENS = parser.parse_args().recompute
    line = [f"recompute={local.RECOMPUTE_TOKENS}"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in ("docs", "pydoc"):
            corpus = ROOT / "docs" if name == "docs" else pydoc_corpus(tmp / "pydoc")
            every = prompts(name, corpus, tmp / name)
            items = [(p, a) for p, a in every if len(p.passages) >= 2]
            f = asyncio.run(measure(items))
            print(f"{name}: {len(items)} of {len(every)} grounded prompts have 2+ passages; "
                  f"tokens placed p50 {statistics.median(f['placed']) if f['placed'] else 0:.0f}")
            print(f"  first-token KL from full prefill: assembled mean {statistics.mean(f['kl']):.4f}, "
                  f"steps cut elsewhere mean {statistics.mean(f['kl_noise']):.4f}")
            print(f"  teacher-forced agreement with full prefill: assembled {statistics.mean(f['agree']):.3f}, "
                  f"steps cut elsewhere {statistics.mean(f['agree_noise']):.3f}")
            print(f"  right: full prefill {sum(f['right_full'])}, assembled {sum(f['right_assembled'])}", flush=True)
            line.append(f"{name}_kl={statistics.mean(f['kl']):.4f} {name}_kl_noise={statistics.mean(f['kl_noise']):.4f} "
                        f"{name}_agree={statistics.mean(f['agree']):.3f} {name}_agree_noise={statistics.mean(f['agree_noise']):.3f} "
                        f"{name}_right={sum(f['right_full'])}->{sum(f['right_assembled'])}/{len(items)}")
    print("passage_assembly " + " ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
