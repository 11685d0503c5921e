"""Prefill step size: an answer's time to first token against the longest step a keystroke may
wait behind, on the same prompts, in one run.

    python bench/prefill_step_bench.py [--sizes 8,32,128,512]

Builds the small tier's prompt for every grounded question of docs/ exactly as the service does,
then answers each one (three times over) on one model per step size (the sizes take turns on each prompt, so the
machine's noise falls on all of them alike). A keystroke that arrives while nobody was typing
waits for the step in progress, so the longest step is what a step size costs the first
keystroke of a burst. Also counts answers (40 greedy tokens) that differ from the largest size's,
since splitting the prompt into other batches moves the logits a little. Prints the figures last,
in one plain line.
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
    from smallfirst.service.llm.prompts import PassagePrompt

ANSWER_TOKENS = 40
PASSES = 3  # the docs set has 12 grounded questions: each is answered this many times over


async def measure(items: list[tuple["PassagePrompt", list[str]]], sizes: list[int]) -> dict[int, dict[str, list]]:
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.loading import bundled_model_path
    from smallfirst.service.llm.prompts import ANSWER_STOPS
    from smallfirst.service.scheduler import CpuScheduler, Priority

    scheduler = CpuScheduler()
    scheduler.start()
    models = {size: await LocalBackend.load("small", bundled_model_path(), 2048, 0, scheduler, Priority.ANSWER, size, 16)
              for size in sizes}
    out: dict[int, dict[str, list]] = {size: {"first_ms": [], "step_ms": [], "answers": []} for size in sizes}
    for size, model in models.items():  # step durations, timed where they run
        evaluate = model._eval

        def timed(tokens, save=None, evaluate=evaluate, size=size):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            evaluate(tokens, save)
            out[size]["step_ms"].append((time.perf_counter() - started) * 1000)

        model._eval = timed  # type: ignore[method-assign]
    try:
        for prompt, _ in items * PASSES:
            for size, model in models.items():
                started = time.perf_counter()
                pieces = []
                async for piece in model.stream(prompt.text, max_tokens=ANSWER_TOKENS, stop=ANSWER_STOPS,
                                                passages=prompt.passages):
                    if not pieces:
                        out[size]["first_ms"].append((time.perf_counter() - started) * 1000)
                    pieces.append(piece)
                out[size]["answers"].append("".join(pieces))
    finally:
        scheduler.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,32,128,512")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        items = prompts("docs", ROOT / "docs", Path(tmp) / "store")
    figures = asyncio.run(measure(items, sizes))
    reference = figures[32]["first_ms"] if 32 in figures else figures[sizes[0]]["first_ms"]
    largest = figures[sizes[-1]]["answers"]
    line = []
    for size in sizes:
        f = figures[size]
        first = statistics.median(f["first_ms"])
        longest = max(f["step_ms"]) if f["step_ms"] else 0.0
        differ = sum(a != b for a, b in zip(f["answers"], largest))
        print(f"step {size:4d}: answer first token p50 {first:.1f} ms ({first / statistics.median(reference):.2f}x step 32), "
              f"longest step {longest:.1f} ms, step p50 {statistics.median(f['step_ms']):.1f} ms, "
              f"answers differing from step {sizes[-1]}: {differ}/{len(largest)}")
        line.append(f"step{size}_first_p50_ms={first:.1f} step{size}_longest_ms={longest:.1f}")
    print(" ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
