"""Time to first token through the real service: keystrokes (warm prefix vs cold text) and answers.

Starts `smallfirst serve` on the bundled model with `docs/` ingested into a temporary store,
then drives the WebSocket one request at a time (nothing else should run on the machine).
Prints the figures last, in one plain line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time

import websockets

from harness import ROOT, bench_env, ingest, service

from smallfirst.service.percentiles import percentile

TYPED = "The scheduler runs every heavy computation on one worker thread, so keystrokes come first."
COLD = [
    "Quarterly revenue grew", "My favourite mountain", "Please remember to", "Dear committee members,",
    "The recipe calls for", "In the second chapter", "Our train leaves at", "Bring a warm jacket",
    "The museum will reopen", "Children under twelve", "After the storm passed", "Every Thursday evening",
]
QUESTIONS = [
    "How long does the first install take?", "What does the ingest summary print?",
    "Which origins may connect to the WebSocket?", "How many tokens does a chunk hold?",
    "What happens when a new complete arrives?", "Why does the service use one scheduler?",
]


def pct(values: list[float], q: float) -> float:
    """The ``q`` (0..1) quantile, by the project's one percentile definition."""
    found = percentile(values, q * 100)
    assert found is not None, "no values"
    return found


async def first_token(ws, frame: dict) -> float:
    """Milliseconds from sending ``frame`` to its first token frame; drains to done."""
    sent = time.perf_counter()
    await ws.send(json.dumps(frame))
    first = None
    while True:
        msg = json.loads(await ws.recv())
        if msg.get("id") != frame["id"]:
            continue
        if msg["type"] == "token" and first is None:
            first = (time.perf_counter() - sent) * 1000
        if msg["type"] in ("done", "error"):
            if msg["type"] == "error":
                raise RuntimeError(msg)
            return first if first is not None else (time.perf_counter() - sent) * 1000


async def measure(url: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"warm": [], "cold": [], "ask": [], "ask_again": []}
    async with websockets.connect(url) as ws:
        await ws.recv()
        await first_token(ws, {"type": "complete", "id": "w0", "text": TYPED[:10], "max_tokens": 8})
        for i in range(11, len(TYPED) + 1):  # one keystroke after another, as typed
            out["warm"].append(await first_token(ws, {"type": "complete", "id": f"k{i}", "text": TYPED[:i], "max_tokens": 8}))
        for i, text in enumerate(COLD):  # unrelated texts: no reusable prefix
            out["cold"].append(await first_token(ws, {"type": "complete", "id": f"n{i}", "text": text, "max_tokens": 8}))
        await first_token(ws, {"type": "ask", "id": "a-warm", "question": "What is smallfirst?"})
        for i, question in enumerate(QUESTIONS):
            out["ask"].append(await first_token(ws, {"type": "ask", "id": f"a{i}", "question": question}))
        # The same questions again, in the same order: the KV cache holds the previous question's
        # prompt, so only saved states of each prompt's own sources can spare their prefill.
        for i, question in enumerate(QUESTIONS):
            out["ask_again"].append(await first_token(ws, {"type": "ask", "id": f"b{i}", "question": question}))
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_env(tmp)
        ingest(ROOT / "docs", env)
        with service(env) as port:
            figures = asyncio.run(measure(f"ws://127.0.0.1:{port}/ws"))
    for name, values in figures.items():
        print(f"{name:>5}: n={len(values)} p50={statistics.median(values):.1f} ms p95={pct(values, 0.95):.1f} ms max={max(values):.1f} ms")
    warm, cold, ask, again = (statistics.median(figures[k]) for k in ("warm", "cold", "ask", "ask_again"))
    print(
        f"first_token keystroke_p50_ms={warm:.1f} keystroke_p95_ms={pct(figures['warm'], 0.95):.1f} "
        f"cold_text_p50_ms={cold:.1f} cold_over_keystroke={cold / warm:.2f} "
        f"ask_p50_ms={ask:.1f} ask_p95_ms={pct(figures['ask'], 0.95):.1f} "
        f"ask_cached_p50_ms={again:.1f} ask_cold_over_cached={ask / again:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
