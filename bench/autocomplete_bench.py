"""Autocomplete as you type: smallfirst against llama-cpp-python's own server, in one run.

The peer is what a user would run instead: `python -m llama_cpp.server` on the same GGUF (all
cores, flash attention), one streamed `/v1/completions` request per debounced keystroke, with a
fixed grounding passage in front of the typed text. Both sides get the same typists, driven by
the typing workload of `smallfirst loadtest` (6 characters/s, 100 ms debounce, 8-token
suggestions); time to first token counts from the moment the debounce expired, and a request
is served when its first token arrives before the next keystroke. On both sides, as the widget
does, a keystroke that leaves the suggestion cancels it at once; unlike the widget, a pause after
typing into a suggestion still asks again, so that both sides answer the same keystrokes.

1. smallfirst (docs/ ingested, grounding on): one typist; the same keystrokes replayed one at a
   time; four typists at once; one typist while answers stream on another connection.
2. smallfirst with `SMALLFIRST_COMPLETE_PREFIX_REUSE=false` (the naive baseline: every keystroke
   retrieves and prefills from scratch): the same replay.
3. The peer: one typist; four typists; one typist while a long completion streams.
4. The peer on smallfirst's keystroke copy of the model (its output layer at Q4_0, see
   `service/llm/keystroke_model.py`): one typist, so that what the copy gives and what the
   service gives show apart.
One model process runs at a time. Figures last, in one plain line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import websockets

from harness import ROOT, bench_env, free_port, ingest, running, service

sys.path.insert(0, str(ROOT))

from smallfirst.service.llm.keystroke_model import keystroke_model  # noqa: E402
from smallfirst.service.llm.loading import bundled_model_path  # noqa: E402
from smallfirst.service.tools.loadtest.cli import DEFAULT_QUESTIONS  # noqa: E402
from smallfirst.service.tools.loadtest.samples import ProtocolChecker, Sample  # noqa: E402
from smallfirst.service.percentiles import percentile  # noqa: E402
from smallfirst.service.tools.loadtest.workloads import TypingProfile, keystroke_times, type_session, typed_into  # noqa: E402

# Every pause asks, also one that types into the suggestion shown (the widget would keep it), so
# that both sides answer the same keystrokes and their latencies compare.
PROFILE = TypingProfile(chars_per_s=6.0, jitter=0.5, debounce_s=0.1, max_tokens=8, keep_typed_into=False)
TEXTS = [
    "The service streams tokens over a WebSocket, and a new keystroke cancels the suggestion that is still running.",
    "Ingestion runs in a background worker, so the service keeps answering while new documents are embedded.",
    "When the documents do not cover a question, the router escalates it to the large model before any token.",
    "Autocomplete keeps the evaluated tokens in the cache, so a keystroke only evaluates the characters that changed.",
]
SNIPPET = (
    "Autocomplete suggests how the text being typed continues. The suggestion appears as grey ghost text after "
    "the cursor; Tab accepts it and Escape dismisses it. Consecutive keystrokes share almost all of their text, "
    "so the server keeps the evaluated tokens in the key-value cache and only evaluates what changed.\n\n"
)
WARMUP_S = 1.5


@dataclass
class Figures:
    ttft: list[float]
    sent: int
    served: int  # answered (first token, or done with nothing to suggest) before the typist's next request
    in_time: int  # first token before the typist's next keystroke

    @property
    def share(self) -> float:
        return self.served / self.sent if self.sent else 0.0

    def line(self, name: str) -> str:
        p = [percentile(self.ttft, q) for q in (50, 95, 99)]
        return (f"{name:<34} n={self.sent:<4} served={self.share:6.1%} before next key={self.in_time / max(1, self.sent):6.1%} "
                f"first token p50={_f(p[0])} p95={_f(p[1])} p99={_f(p[2])} ms")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def figures(samples: list[Sample]) -> Figures:
    """Warm-up excluded. A request is served when its first token came before the same typist's
    next request (which supersedes it) was sent."""
    by_typist: dict[str, list[Sample]] = {}
    for sample in samples:
        by_typist.setdefault(sample.id.rsplit("-", 1)[0], []).append(sample)
    served = set()
    for mine in by_typist.values():
        mine.sort(key=lambda s: s.scheduled)
        for sample, after in zip(mine, mine[1:] + [None]):
            limit = after.sent if after is not None and after.sent is not None else float("inf")
            answered = sample.first_token  # or an empty suggestion, completed and sent as such
            if answered is None and sample.finish in ("stop", "length"):
                answered = sample.done
            if answered is not None and sample.error is None and answered <= limit:
                served.add(sample.id)
    measured = [s for s in samples if not s.warmup]
    return Figures([s.ttft_ms for s in measured if s.ttft_ms is not None], len(measured),
                   sum(1 for s in measured if s.id in served), sum(1 for s in measured if s.delivered))


# smallfirst ------------------------------------------------------------------------------

async def ours_typists(url: str, texts: list[list[str]], seed: int = 0) -> list[Sample]:
    """Each inner list is one typist's texts, typed one after another; typists run at once."""
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    checker = ProtocolChecker()

    async def typist(k: int, mine: list[str]) -> list[Sample]:
        rng = random.Random(seed * 100 + k)
        out: list[Sample] = []
        start = 0.1 + 0.37 * k
        for n, text in enumerate(mine):
            out += await type_session(url, None, text, start, f"t{k}-{n}", clock, 30.0, checker, PROFILE, rng,
                                      warmup_until=WARMUP_S + 0.37 * k if n == 0 else 0.0)
            start = clock() + 0.5
        return out

    results = await asyncio.gather(*(typist(k, mine) for k, mine in enumerate(texts)))
    if checker.errors:
        raise SystemExit(f"protocol errors: {checker.errors[:3]}")
    return [s for r in results for s in r]


async def ours_answers(url: str, stop: asyncio.Event) -> tuple[int, int]:
    """Ask back to back until ``stop``; returns (answers completed, answers that failed)."""
    completed = failed = 0
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        n = 0
        while not stop.is_set():
            n += 1
            await ws.send(json.dumps({"type": "ask", "id": f"a{n}", "question": DEFAULT_QUESTIONS[n % len(DEFAULT_QUESTIONS)], "tier": "small"}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("type") == "done":
                    completed += frame.get("finish") in ("stop", "length")
                    failed += frame.get("finish") not in ("stop", "length")
                    break
                if frame.get("type") == "error":
                    failed += 1
                    break
    return completed, failed


async def replay(url: str, prefixes: list[str], timings: list[dict[str, float]] | None = None) -> list[float]:
    """The keystrokes one at a time: first token of each, the next sent once the previous is done.
    The server's own timings of each request go to ``timings`` when given."""
    out: list[float] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        for i, text in enumerate(prefixes):
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "complete", "id": f"r{i}", "text": text, "max_tokens": PROFILE.max_tokens}))
            first = None
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("id") != f"r{i}":
                    continue
                if frame["type"] == "token" and first is None:
                    first = (time.perf_counter() - sent) * 1000
                if frame["type"] in ("done", "error"):
                    break
            if first is not None:
                out.append(first)
                if timings is not None and frame["type"] == "done":
                    timings.append({**frame["timings_ms"], "client": first})
    return out


def breakdown(timings: list[dict[str, float]]) -> str:
    """Medians of where a keystroke's time to first token goes."""
    med = {k: percentile([t[k] for t in timings if t.get(k) is not None], 50) or 0.0
           for k in ("client", "first_token", "prefill", "queue", "step")}
    return (f"keystroke breakdown (medians, n={len(timings)}): client sees {med['client']:.1f} ms = "
            f"model step {med['step']:.1f} + waiting for the first step {med['queue']:.1f} + engine, event loop and steps that showed nothing "
            f"{med['prefill'] - med['step'] - med['queue']:.1f} + session and frame writing {med['first_token'] - med['prefill']:.1f} "
            f"+ network and client {med['client'] - med['first_token']:.1f}")


async def typist_with_answers(url: str, text: str) -> tuple[list[Sample], int, int]:
    stop = asyncio.Event()
    answers = asyncio.ensure_future(ours_answers(url, stop))
    await asyncio.sleep(2.0)  # the first answer is streaming when typing starts
    samples = await ours_typists(url, [[text]], seed=7)
    stop.set()
    completed, failed = await asyncio.wait_for(answers, 120)
    return samples, completed, failed


# The peer --------------------------------------------------------------------------------

@contextlib.contextmanager
def peer(model: Path | None = None) -> Iterator[str]:
    """`python -m llama_cpp.server` on ``model`` (the bundled one by default), all cores; yields its base URL."""
    port = free_port()
    cores = str(os.cpu_count() or 1)
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model or bundled_model_path()), "--port", str(port),
               "--n_ctx", "2048", "--n_threads", cores, "--n_threads_batch", cores, "--flash_attn", "true"]
    with running(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, f"{base}/v1/models", "the peer server", 120):
        yield base


async def peer_request(client: httpx.AsyncClient, base: str, prompt: str, sample: Sample, clock: Any,
                       max_tokens: int, next_key: float) -> str | None:
    """One streamed completion; returns its finish reason (None when the stream was cut)."""
    finish = None
    try:
        async with client.stream("POST", f"{base}/v1/completions", json={
            "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        }) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                if choice.get("text") and sample.first_token is None:
                    sample.first_token = clock()
                sample.text += choice.get("text") or ""
                finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as exc:
        sample.error = type(exc).__name__
    except asyncio.CancelledError:
        finish = "cancelled"
    sample.done, sample.finish = clock(), finish
    sample.delivered = sample.first_token is not None and sample.first_token <= next_key
    return finish


async def peer_typists(base: str, texts: list[list[str]], seed: int = 0) -> list[Sample]:
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731

    async def typist(k: int, mine: list[str], client: httpx.AsyncClient) -> list[Sample]:
        rng = random.Random(seed * 100 + k)
        out: list[Sample] = []
        start = 0.1 + 0.37 * k
        for n, text in enumerate(mine):
            tasks: list[asyncio.Future[Any]] = []
            shown: tuple[Sample, str] | None = None
            typed = keystroke_times(text, start, PROFILE, rng)  # the loadtest's timing rules, as in type_session
            for i, at in enumerate(typed):
                send_at = at + PROFILE.debounce_s
                next_key = typed[i + 1] if i + 1 < len(typed) else float("inf")
                await asyncio.sleep(max(0.0, at - clock()))
                if shown is not None:  # as type_session does: keep a suggestion typed into, else drop it
                    last, sent = shown
                    if typed_into(sent, last.text, text[: i + 1]):
                        if PROFILE.keep_typed_into and len(sent) + len(last.text) > i + 1:
                            continue
                    else:
                        if not tasks[-1].done():
                            tasks[-1].cancel()
                        shown = None
                if next_key <= send_at or not text[: i + 1].strip():
                    continue
                await asyncio.sleep(max(0.0, send_at - clock()))
                sample = Sample("type", f"p{k}-{n}-{i}", send_at, warmup=n == 0 and send_at < WARMUP_S + 0.37 * k)
                if tasks and not tasks[-1].done():
                    tasks[-1].cancel()  # a new keystroke: the client drops the request it no longer needs
                sample.sent = clock()
                out.append(sample)
                tasks.append(asyncio.ensure_future(peer_request(client, base, SNIPPET + text[: i + 1], sample, clock,
                                                                PROFILE.max_tokens, next_key)))
                shown = (sample, text[: i + 1])
            await asyncio.gather(*tasks, return_exceptions=True)
            start = clock() + 0.5
        return out

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        results = await asyncio.gather(*(typist(k, mine, client) for k, mine in enumerate(texts)))
    return [s for r in results for s in r]


async def peer_with_answer(base: str, text: str) -> tuple[list[Sample], int, int]:
    """A long completion streams while one typist types: was it cut?"""
    completed = cut = 0
    stop = asyncio.Event()

    async def answers(client: httpx.AsyncClient) -> None:
        nonlocal completed, cut
        n = 0
        while not stop.is_set():
            n += 1
            sample = Sample("ask", f"pa{n}", 0.0)
            finish = await peer_request(client, base, SNIPPET + "Question: " + DEFAULT_QUESTIONS[n % len(DEFAULT_QUESTIONS)] + "\nAnswer:",
                                        sample, time.perf_counter, 200, float("inf"))
            if finish in ("stop", "length") and sample.error is None:
                completed += 1
            else:
                cut += 1

    async with httpx.AsyncClient(timeout=120) as client:
        task = asyncio.ensure_future(answers(client))
        await asyncio.sleep(2.0)
        samples = await peer_typists(base, [[text]], seed=7)
        stop.set()
        await asyncio.wait_for(task, 120)
    return samples, completed, cut


# The run ---------------------------------------------------------------------------------

def prefixes_of(text: str, every: int) -> list[str]:
    return [text[:i] for i in range(12, len(text) + 1, every)]


def main() -> int:
    one = [[TEXTS[0], TEXTS[1]]]
    four = [[t] for t in TEXTS]
    replayed = prefixes_of(TEXTS[0], 1)
    naive_replayed = prefixes_of(TEXTS[0], 4)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_env(tmp)
        ingest(ROOT / "docs", env)
        with service(env) as port:
            url = f"ws://127.0.0.1:{port}/ws"
            asyncio.run(replay(url, prefixes_of(TEXTS[3], 6)))  # warm the caches and the grounding
            report["ours_one"] = figures(asyncio.run(ours_typists(url, one)))
            report["timings"] = []
            report["ours_replay"] = asyncio.run(replay(url, replayed, report["timings"]))
            report["ours_replay_naive_set"] = asyncio.run(replay(url, naive_replayed))
            report["ours_four"] = figures(asyncio.run(ours_typists(url, four, seed=1)))
            samples, completed, failed = asyncio.run(typist_with_answers(url, TEXTS[2]))
            report["ours_answers"] = (figures(samples), completed, failed)
        with service(bench_env(tmp, SMALLFIRST_COMPLETE_PREFIX_REUSE="false")) as port:
            url = f"ws://127.0.0.1:{port}/ws"
            asyncio.run(replay(url, prefixes_of(TEXTS[3], 30)))
            report["naive_replay"] = asyncio.run(replay(url, naive_replayed))
    with peer() as base:
        asyncio.run(peer_typists(base, [[TEXTS[3][:40]]]))  # warm-up
        report["peer_one"] = figures(asyncio.run(peer_typists(base, one)))
        report["peer_four"] = figures(asyncio.run(peer_typists(base, four, seed=1)))
        samples, completed, cut = asyncio.run(peer_with_answer(base, TEXTS[2]))
        report["peer_answers"] = (figures(samples), completed, cut)
    with peer(keystroke_model(bundled_model_path())) as base:
        asyncio.run(peer_typists(base, [[TEXTS[3][:40]]]))
        report["peer_copy_one"] = figures(asyncio.run(peer_typists(base, one)))

    ours, peer_one = report["ours_one"], report["peer_one"]
    ours_four, peer_four = report["ours_four"], report["peer_four"]
    (ours_ans, ans_done, ans_failed), (peer_ans, peer_done, peer_cut) = report["ours_answers"], report["peer_answers"]
    replay_p50 = percentile(report["ours_replay"], 50)
    same_set_p50 = percentile(report["ours_replay_naive_set"], 50)
    naive_p50 = percentile(report["naive_replay"], 50)
    print(ours.line("smallfirst, 1 typist"))
    print(peer_one.line("peer, 1 typist"))
    print(report["peer_copy_one"].line("peer on the keystroke copy, 1 typist"))
    print(ours_four.line("smallfirst, 4 typists"))
    print(peer_four.line("peer, 4 typists"))
    print(ours_ans.line("smallfirst, 1 typist + answers") + f"  answers completed {ans_done}, failed {ans_failed}")
    print(peer_ans.line("peer, 1 typist + long completion") + f"  completions finished {peer_done}, cut {peer_cut}")
    print(f"replay one keystroke at a time: smallfirst p50={_f(replay_p50)} p95={_f(percentile(report['ours_replay'], 95))} ms "
          f"(n={len(report['ours_replay'])}); on every 4th prefix smallfirst p50={_f(same_set_p50)} ms, "
          f"naive p50={_f(naive_p50)} p95={_f(percentile(report['naive_replay'], 95))} ms (n={len(report['naive_replay'])})")
    print(breakdown(report["timings"]))
    p50, p95 = percentile(ours.ttft, 50), percentile(ours.ttft, 95)
    peer_p50 = percentile(peer_one.ttft, 50)
    print(
        f"autocomplete p50_ms={_f(p50)} p95_ms={_f(p95)} vs_peer_p50={p50 / peer_p50:.2f} "
        f"vs_peer_on_copy_p50={p50 / percentile(report['peer_copy_one'].ttft, 50):.2f} "
        f"speedup_p50={naive_p50 / same_set_p50:.1f} four_typists_p95_ms={_f(percentile(ours_four.ttft, 95))} "
        f"with_answers_p95_ms={_f(percentile(ours_ans.ttft, 95))} peer_p50_ms={_f(peer_p50)} "
        f"peer_p95_ms={_f(percentile(peer_one.ttft, 95))} four_typists_served={ours_four.share:.2f} "
        f"peer_four_typists_p95_ms={_f(percentile(peer_four.ttft, 95))} peer_four_typists_served={peer_four.share:.2f} "
        f"answers_completed={ans_done}/{ans_done + ans_failed}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
