"""Name choice: options scored side by side against one at a time, in one run.

    python bench/choice_bench.py

For every grounded question of both QA sets that asks for a name and whose best evidence gives
options, exactly as the service builds them, time ``LocalBackend.choose`` on two models: one
scoring up to eight options side by side (each in its own sequence sharing the prompt's cells,
their tokens in steps of 32 rows), one scoring one token of one option per step, as options
were scored before. Both hold the same
prompt's KV before each choice (the prompt is evaluated once, untimed), so the time is the
choice's own: the question after the last passage, evaluated again, and the options. They take turns on each question. Also
counts the choices that differ and the right ones. Prints the figures last, in one plain line.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from answer_kv_bench import questions
from eval_bench import pydoc_corpus
from harness import ROOT

sys.path.insert(0, str(ROOT))


async def measure(items: list[dict]) -> dict[str, list]:
    from smallfirst.retrieval.expectation import answer_phrase, expected, name_options
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.llm.loading import bundled_model_path
    from smallfirst.service.scheduler import CpuScheduler, Priority
    from smallfirst.service.tools.eval import _matches

    scheduler = CpuScheduler()
    scheduler.start()
    path = bundled_model_path()
    side = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 1 << 30)
    single = await LocalBackend.load("small", path, 2048, 0, scheduler, Priority.ANSWER, 32, 16, 1 << 30)
    single._lanes = 1
    rows = single._score_rows  # ... and one token a step: how options were scored before
    single._score_rows = lambda batch: [score for row in batch for score in rows([row])]  # type: ignore[method-assign]
    out: dict[str, list] = {"side_ms": [], "single_ms": [], "same": [], "right_side": [], "right_single": [],
                            "options": []}
    try:
        for item in items:
            expectation = expected(item["question"])
            if expectation is None:
                continue
            options = name_options(item["question"], expectation, item["evidence"].ranked, "\n".join(item["texts"]))
            if not options:
                continue
            names = [name for name, _ in options]
            prompt = item["prompt"]
            picks = []
            for model, key in ((side, "side_ms"), (single, "single_ms")):
                await model.choose(prompt.text, names[:1], passages=prompt.passages)  # the sources now in the KV
                started = time.perf_counter()
                picks.append(await model.choose(prompt.text, names, passages=prompt.passages))
                out[key].append((time.perf_counter() - started) * 1000)
            out["options"].append(len(names))
            out["same"].append(picks[0] == picks[1])
            for pick, key in zip(picks, ("right_side", "right_single")):
                out[key].append(_matches(answer_phrase(names[pick], expectation), item["accepted"]))
    finally:
        scheduler.stop()
    return out


def main() -> int:
    merged: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in ("docs", "pydoc"):
            corpus = ROOT / "docs" if name == "docs" else pydoc_corpus(tmp / "pydoc")
            for key, values in asyncio.run(measure(questions(name, corpus, tmp / name))).items():
                merged.setdefault(key, []).extend(values)
    f = merged
    side, single = statistics.median(f["side_ms"]), statistics.median(f["single_ms"])
    print(f"{len(f['same'])} name questions with options ({statistics.mean(f['options']):.1f} options each)")
    print(f"side by side: choice p50 {side:.1f} ms; one token a step: {single:.1f} ms ({side / single:.2f}x)")
    print(f"same choice: {sum(f['same'])}/{len(f['same'])}; right: {sum(f['right_single'])} one token a step, "
          f"{sum(f['right_side'])} side by side")
    print(f"choice side_p50_ms={side:.1f} single_p50_ms={single:.1f} ratio={side / single:.2f} "
          f"same={sum(f['same'])}/{len(f['same'])} right={sum(f['right_single'])}->{sum(f['right_side'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
