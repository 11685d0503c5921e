"""Cached passages against cold prefill: ask → first token for a new question on sources whose
passages were evaluated before, in one run.

    python bench/passage_kv_bench.py [--rounds 3]

Builds the small tier's prompt for every grounded question of docs/ exactly as the service does,
and answers each once on a model that saves states (every passage's state is saved at its end).
Then each prompt's sources are asked a different question (the set's next question, then the
one after, for ``--rounds`` rounds): the model with saved states restores the frame and passage
and evaluates only the question's tail; a model without saved states, holding the previous
prompt in its KV just the same, evaluates the passage again. The two take turns on each prompt,
so the machine's noise falls on both alike; a third model, also without saved states, answers
each follow-up with its prompt in one piece, to show what cutting steps at passage edges costs
a cold prefill. Also counts answers that differ between the two
(restoring is exact, so none should). Prints the figures last, in one plain line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from answer_kv_bench import prompts
from harness import ROOT

sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.prompts import PassagePrompt

ANSWER_TOKENS = 24


async def ask(model: "LocalBackend", prompt: "PassagePrompt", passages: bool = True) -> tuple[float, str, int]:
    """First token ms, the answer, and the prompt tokens prefill evaluated (``passages`` False:
    the prompt as one piece, as before passages were cut apart)."""
    from smallfirst.service.llm.prompts import ANSWER_STOPS

    before = model.prefilled_tokens
    started = time.perf_counter()
    first = None
    pieces = []
    async for piece in model.stream(prompt.text, max_tokens=ANSWER_TOKENS, stop=ANSWER_STOPS,
                                    save_at=() if passages else (len(prompt.text),),  # as the service does
                                    passages=prompt.passages if passages else ()):
        if first is None:
            first = (time.perf_counter() - started) * 1000
        pieces.append(piece)
    return first if first is not None else (time.perf_counter() - started) * 1000, "".join(pieces), \
        model.prefilled_tokens - before


async def measure(items: list["PassagePrompt"], rounds: int) -> dict[str, list]:
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.loading import bundled_model_path
    from smallfirst.service.llm.prompts import passage_prompt
    from smallfirst.service.scheduler import CpuScheduler, Priority

    scheduler = CpuScheduler()
    scheduler.start()
    path = bundled_model_path()
    saving = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 1 << 30)
    plain = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 0)
    whole = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 0)
    out: dict[str, list] = {"cached_ms": [], "cold_ms": [], "cached_prefill": [], "cold_prefill": [], "same": [],
                            "whole_ms": []}
    try:
        for prompt in items:  # every passage evaluated once, as earlier questions would have
            await ask(saving, prompt)
        questions = [p.text.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:") for p in items]
        for shift in range(1, rounds + 1):
            for i, prompt in enumerate(items):
                blocks = [prompt.text[a:b].removesuffix("\n\n") for a, b in prompt.passages]
                follow_up = passage_prompt(blocks, questions[(i + shift) % len(items)])
                cached_ms, cached_text, cached_prefill = await ask(saving, follow_up)
                cold_ms, cold_text, cold_prefill = await ask(plain, follow_up)
                out["whole_ms"].append((await ask(whole, follow_up, passages=False))[0])
                out["cached_ms"].append(cached_ms)
                out["cold_ms"].append(cold_ms)
                out["cached_prefill"].append(cached_prefill)
                out["cold_prefill"].append(cold_prefill)
                out["same"].append(cached_text == cold_text)
    finally:
        scheduler.stop()
    return out


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items = [prompt for prompt, _ in prompts("docs", ROOT / "docs", Path(tmp) / "store") if prompt.passages]
    f = asyncio.run(measure(items, args.rounds))
    cached, cold = statistics.median(f["cached_ms"]), statistics.median(f["cold_ms"])
    print(f"{len(f['cached_ms'])} follow-up questions on {len(items)} prompts' sources "
          f"({statistics.mean(len(p.passages) for p in items):.2f} passages a prompt)")
    print(f"cold: first token p50 {cold:.1f} ms, p95 {p95(f['cold_ms']):.1f} ms, "
          f"prefilled tokens p50 {statistics.median(f['cold_prefill']):.0f}")
    whole = statistics.median(f["whole_ms"])
    print(f"cold, prompt in one piece (no steps cut at passage edges): first token p50 {whole:.1f} ms "
          f"(cut at passages: {cold / whole:.2f}x)")
    print(f"passages cached: first token p50 {cached:.1f} ms, p95 {p95(f['cached_ms']):.1f} ms, "
          f"prefilled tokens p50 {statistics.median(f['cached_prefill']):.0f}")
    print(f"answers the same both ways: {sum(f['same'])}/{len(f['same'])}")
    print(f"passage_kv cached_first_p50_ms={cached:.1f} cold_first_p50_ms={cold:.1f} ratio={cached / cold:.2f} "
          f"cached_first_p95_ms={p95(f['cached_ms']):.1f} cold_cut_vs_whole={cold / whole:.2f} same_answers={sum(f['same'])}/{len(f['same'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
