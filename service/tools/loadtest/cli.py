"""The ``smallfirst loadtest`` command: schedule arrivals, run sessions, print, save, gate."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from smallfirst.credentials import client_token
from smallfirst.settings import Settings
from smallfirst.service.tools.loadtest.report import render
from smallfirst.service.tools.loadtest.samples import ProtocolChecker, Sample
from smallfirst.service.tools.loadtest.summary import failed_conditions, flat_metrics, parse_condition, summarise
from smallfirst.service.tools.loadtest.workloads import TypingProfile, ask_session, type_session

DEFAULT_QUESTIONS = (
    "How long does the first install take?", "Which file formats can be ingested?",
    "What does the done frame report?", "Why does the service use one scheduler?",
    "Which origins may connect to the WebSocket?", "What happens to the chunks of a deleted file?",
)
DEFAULT_TEXTS = (
    "The scheduler runs every heavy computation on one worker thread.",
    "Retrieved documents are fenced in the prompt and treated as data.",
    "Autocomplete keeps the key-value cache between keystrokes.",
    "The lighthouse museum opens at nine in the morning.",
)


@dataclass
class Plan:
    url: str
    token: str | None
    weights: dict[str, float]
    questions: list[str]
    texts: list[str]
    rate: float
    duration: float
    concurrency: int | None
    warmup: float
    timeout: float
    max_sessions: int
    profile: TypingProfile
    seed: int


class Run:
    """One load test: its clock, its sessions and what they recorded."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.samples: list[Sample] = []
        self.checkers: list[ProtocolChecker] = []
        self.skipped = 0
        self._n = 0
        self._started = time.perf_counter()

    def clock(self) -> float:
        return time.perf_counter() - self._started

    def _session(self, scheduled: float) -> Awaitable[list[Sample]]:
        plan = self.plan
        self._n += 1
        workload = self.rng.choices(list(plan.weights), weights=list(plan.weights.values()))[0]
        checker = ProtocolChecker()
        self.checkers.append(checker)
        if workload == "ask":
            sample = Sample("ask", f"a{self._n}", scheduled, warmup=scheduled < plan.warmup)
            return ask_session(plan.url, plan.token, self.rng.choice(plan.questions), sample, self.clock, plan.timeout, checker)
        return type_session(plan.url, plan.token, self.rng.choice(plan.texts), scheduled, f"t{self._n}", self.clock,
                            plan.timeout, checker, plan.profile, random.Random(self.rng.random()), plan.warmup)

    async def _collect(self, task: Awaitable[list[Sample]]) -> None:
        self.samples.extend(await task)

    async def open_loop(self) -> None:
        """Poisson arrivals; each latency counts from its scheduled time, so queueing shows."""
        tasks: set[asyncio.Task[None]] = set()
        at = 0.0
        while True:
            at += self.rng.expovariate(self.plan.rate)
            if at >= self.plan.duration:
                break
            await asyncio.sleep(max(0.0, at - self.clock()))
            if len(tasks) >= self.plan.max_sessions:
                self.skipped += 1
                continue
            task = asyncio.ensure_future(self._collect(self._session(at)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await self._drain(tasks)

    async def closed_loop(self, workers: int) -> None:
        async def worker() -> None:
            while self.clock() < self.plan.duration:
                await self._collect(self._session(self.clock()))
        await self._drain({asyncio.ensure_future(worker()) for _ in range(workers)})

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.plan.timeout + 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def progress(self, stream: Any) -> None:
        while True:
            await asyncio.sleep(1.0)
            done = [s for s in self.samples if s.done is not None]
            errors = sum(1 for s in self.samples if s.error or s.timeout)
            stream.write(f"\r[{self.clock():5.1f}s/{self.plan.duration:.0f}s] sessions {self._n} "
                         f"requests done {len(done)} errors {errors}   ")
            stream.flush()


def read_lines(path: Path | None, default: tuple[str, ...], key: str) -> list[str]:
    """Lines of a file (a JSONL line contributes its ``key`` field), or the built-in defaults."""
    if path is None:
        return list(default)
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                line = str(json.loads(line)[key])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: a JSON line needs a {key!r} field") from None
        items.append(line)
    if not items:
        raise ValueError(f"{path}: empty")
    return items


def parse_weights(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        if name not in ("ask", "type"):
            raise ValueError(f"unknown workload {name!r}; use ask, type or both like ask:3,type:1")
        weights[name] = float(weight or 1)
        if weights[name] <= 0:
            raise ValueError(f"workload weight must be positive: {part!r}")
    return weights


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="WebSocket URL of the service.")
    parser.add_argument("--workload", default="ask", help="ask, type, or a weighted mix like ask:3,type:1.")
    parser.add_argument("--questions", type=Path, help="Questions, one per line or eval QA JSONL (default: a built-in set).")
    parser.add_argument("--texts", type=Path, help="Texts for the typing workload, one per line (default: a built-in set).")
    parser.add_argument("--rate", type=float, default=1.0, help="Open loop: sessions started per second (Poisson).")
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds during which sessions start.")
    parser.add_argument("--concurrency", type=int, help="Closed loop instead: this many users back to back.")
    parser.add_argument("--warmup", type=float, default=0.0, help="Seconds at the start not counted in the figures.")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds a request may take before it counts as timed out.")
    parser.add_argument("--max-sessions", type=int, default=256, help="Open loop: most sessions at once; arrivals beyond are skipped and counted.")
    parser.add_argument("--chars-per-s", type=float, default=6.0, help="Typing speed of the typing workload.")
    parser.add_argument("--debounce-ms", type=float, default=100.0, help="Pause after a keystroke before a suggestion is asked for.")
    parser.add_argument("--suggest-tokens", type=int, default=8, help="max_tokens of each suggestion.")
    parser.add_argument("--slo-ttft-ms", type=float, default=1000.0, help="Goodput: first token within this many ms.")
    parser.add_argument("--slo-itl-ms", type=float, default=200.0, help="Goodput: no gap between tokens longer than this.")
    parser.add_argument("--json", type=Path, dest="json_file", help="Write every raw sample and the summary to this file.")
    parser.add_argument("--report", type=Path, help="Write a self-contained HTML report to this file.")
    parser.add_argument("--fail-if", action="append", default=[], metavar="COND",
                        help="Exit 1 when a condition holds, e.g. p95_ttft_ms>300 or ask.error_rate>0.01 (repeatable).")
    parser.add_argument("--api-token", help="Token for the service (default: SMALLFIRST_API_TOKEN, else DATA_DIR/api-token).")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the arrival and typing randomness.")
    return parser


def _plan(args: argparse.Namespace) -> tuple[Plan, list[tuple[str, str, float]]]:
    if args.rate <= 0 or args.duration <= 0 or args.timeout <= 0 or args.chars_per_s <= 0 or args.max_sessions <= 0:
        raise ValueError("--rate, --duration, --timeout, --chars-per-s and --max-sessions must be positive")
    if args.concurrency is not None and args.concurrency <= 0:
        raise ValueError("--concurrency must be positive")
    if not 0 <= args.warmup < args.duration:
        raise ValueError("--warmup must be at least 0 and shorter than --duration")
    conditions = [parse_condition(c) for text in args.fail_if for c in text.split(",") if c.strip()]
    plan = Plan(
        url=args.url, token=args.api_token or client_token(Settings.load()), weights=parse_weights(args.workload),
        questions=read_lines(args.questions, DEFAULT_QUESTIONS, "question"),
        texts=read_lines(args.texts, DEFAULT_TEXTS, "text"), rate=args.rate, duration=args.duration,
        concurrency=args.concurrency, warmup=args.warmup, timeout=args.timeout, max_sessions=args.max_sessions,
        profile=TypingProfile(args.chars_per_s, 0.5, args.debounce_ms / 1000, args.suggest_tokens), seed=args.seed,
    )
    return plan, conditions


async def execute(plan: Plan, show_progress: bool) -> Run:
    run = Run(plan)
    ticker = asyncio.ensure_future(run.progress(sys.stderr)) if show_progress else None
    try:
        if plan.concurrency:
            await run.closed_loop(plan.concurrency)
        else:
            await run.open_loop()
    finally:
        if ticker is not None:
            ticker.cancel()
            sys.stderr.write("\n")
    return run


def print_table(summary: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out(f"{'workload':<8} {'sent':>5} {'done':>5} {'err':>4} {'t/o':>4} {'ttft p50':>9} {'p95':>7} {'p99':>7} "
        f"{'itl p50':>8} {'p95':>6} {'e2e p50':>8} {'p95':>7} {'tok/s':>6} {'goodput':>7}")
    for scope, f in summary.items():
        def v(metric: str, key: str) -> str:
            value = f[metric][key]
            return "-" if value is None else f"{value:.0f}"
        out(f"{scope:<8} {f['sent']:>5} {f['completed']:>5} {sum(f['errors'].values()):>4} {f['timeouts']:>4} "
            f"{v('ttft_ms', 'p50'):>9} {v('ttft_ms', 'p95'):>7} {v('ttft_ms', 'p99'):>7} {v('itl_ms', 'p50'):>8} "
            f"{v('itl_ms', 'p95'):>6} {v('e2e_ms', 'p50'):>8} {v('e2e_ms', 'p95'):>7} {f['tokens_per_s'] or 0:>6.1f} "
            f"{(f['goodput'] or 0):>7.2f}")


def run(args: argparse.Namespace) -> int:
    try:
        plan, conditions = _plan(args)
    except (ValueError, OSError) as exc:
        print(f"smallfirst loadtest: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(execute(plan, show_progress=sys.stderr.isatty()))
    window = plan.duration - plan.warmup
    slo = (args.slo_ttft_ms, args.slo_itl_ms)
    summary = {"all": summarise(result.samples, window, *slo)}
    for workload in plan.weights:
        summary[workload] = summarise([s for s in result.samples if s.workload == workload], window, *slo)
    protocol_errors = [e for c in result.checkers for e in c.errors]
    print_table(summary)
    extras = {s: summary[s].get("stale_dropped") for s in summary if "stale_dropped" in summary[s]}
    print(f"skipped arrivals (client at --max-sessions): {result.skipped}; protocol errors: {len(protocol_errors)}"
          + (f"; stale suggestions dropped: {extras.get('type')} ({summary['type'].get('arrived_late')} arrived late, the rest "
             f"cancelled before any text), delivered: {summary['type'].get('delivered')}" if "type" in summary else ""))
    for scope, f in summary.items():
        if f["errors"]:
            print(f"{scope} errors by code: {f['errors']}")
        if f["refusal_ms"]["n"]:
            r = f["refusal_ms"]
            print(f"{scope}: {r['n']} refused busy, answered in p50 {r['p50']} / p95 {r['p95']} / max {r['max']} ms")
        if f["shed_ms"]["n"]:
            r = f["shed_ms"]
            print(f"{scope}: {r['n']} given up busy in the queue after admission, after p50 {r['p50']} / p95 {r['p95']} / max {r['max']} ms")
        if f["tiers"]:
            print(f"{scope} tiers: {f['tiers']}, cost ${f['cost_usd']:.6f}")
        if scope == "ask" and "revised" in f:
            print(f"ask: {f['revised']} small answers failed their support check and were replaced; "
                  f"escalated before generation: {f['escalations']}")
    meta = {"url": plan.url, "workloads": plan.weights, "rate": plan.rate, "duration": plan.duration,
            "concurrency": plan.concurrency, "warmup": plan.warmup, "seed": plan.seed}
    if args.json_file:
        args.json_file.write_text(json.dumps({
            "settings": meta, "summary": summary, "skipped": result.skipped, "protocol_errors": protocol_errors,
            "samples": [s.as_dict() for s in result.samples],
        }))
    if args.report:
        args.report.write_text(render(result.samples, summary, meta, plan.duration), encoding="utf-8")
    metrics = flat_metrics(summary)
    metrics["protocol_errors"] = float(len(protocol_errors))
    held = failed_conditions(conditions, metrics)
    for condition in held:
        print(f"fail-if held: {condition}", file=sys.stderr)
    return 1 if held else 0
