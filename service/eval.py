"""``smallfirst eval QA.jsonl``: tiers, routing, sources, answers, latency and cost, through the WebSocket.

Each line of the QA file: ``{"id", "question", "kind": "grounded"|"ungrounded"|"hard",
"pages": [expected source file names], "answer_any": [accepted substrings]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retrieval.credentials import client_token
from retrieval.settings import SettingsError, add_arguments, from_args

KINDS = ("grounded", "ungrounded", "hard")


@dataclass
class Outcome:
    id: str
    kind: str
    tier: str = ""
    reason: str | None = None
    fallback: str | None = None
    source_hit: bool = False
    correct: bool = False
    routed_right: bool = False
    first_token_ms: float | None = None
    total_ms: float = 0.0
    cost_usd: float = 0.0
    all_large_cost_usd: float = 0.0
    answer: str = ""
    error: str | None = None
    sources: list[str] = field(default_factory=list)


def load_questions(path: Path) -> list[dict[str, Any]]:
    """Read and check the QA file; a bad line is an error that names it."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or row.get("kind") not in KINDS:
            raise ValueError(f"{path}:{number}: needs a string 'question' and 'kind' in {KINDS}")
        row.setdefault("id", f"q{number}")
        row.setdefault("pages", [])
        row.setdefault("answer_any", [])
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no questions")
    return rows


async def ask_one(ws: Any, row: dict[str, Any], tier: str, prices: tuple[float, float]) -> Outcome:
    out = Outcome(id=str(row["id"]), kind=row["kind"])
    frame: dict[str, Any] = {"type": "ask", "id": out.id, "question": row["question"]}
    if tier != "auto":
        frame["tier"] = tier
    sent = time.perf_counter()
    await ws.send(json.dumps(frame))
    pieces: list[str] = []
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 300))
        if msg.get("id") != out.id:
            continue
        kind = msg["type"]
        if kind == "sources":
            out.sources = [Path(s["doc_id"]).name for s in msg["sources"]]
        elif kind == "escalated":
            out.reason = msg["reason"]
        elif kind == "fallback":
            out.fallback = msg["reason"]
        elif kind == "token":
            if out.first_token_ms is None:
                out.first_token_ms = round((time.perf_counter() - sent) * 1000, 1)
            pieces.append(msg["text"])
        elif kind == "error":
            out.error = f"{msg['code']}: {msg['message']}"
            break
        elif kind == "done":
            out.tier = msg["tier"]
            out.cost_usd = msg["cost_usd"]
            usage = msg["usage"]
            out.all_large_cost_usd = (usage["prompt_tokens"] * prices[0] + usage["completion_tokens"] * prices[1]) / 1e6
            break
    out.total_ms = round((time.perf_counter() - sent) * 1000, 1)
    out.answer = "".join(pieces).strip()
    out.source_hit = bool(set(row["pages"]) & set(out.sources))
    accepted = [a.lower() for a in row["answer_any"]]
    out.correct = any(a in out.answer.lower() for a in accepted) if accepted else False
    escalated = out.reason is not None
    out.routed_right = escalated if row["kind"] in ("ungrounded", "hard") else not escalated
    return out


async def run_all(url: str, rows: list[dict[str, Any]], tier: str, prices: tuple[float, float], token: str | None) -> list[Outcome]:
    import websockets

    headers = {"Authorization": f"Bearer {token}"} if token else None
    outcomes = []
    async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"unexpected first frame: {ready}")
        for i, row in enumerate(rows, 1):
            outcomes.append(await ask_one(ws, row, tier, prices))
            print(f"\r{i}/{len(rows)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return outcomes


def _share(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    answered = [o for o in outcomes if o.error is None]
    firsts = [o.first_token_ms for o in answered if o.first_token_ms is not None]
    totals = [o.total_ms for o in answered]
    cost = sum(o.cost_usd for o in answered)
    all_large = sum(o.all_large_cost_usd for o in answered)
    return {
        "questions": len(outcomes), "errors": len(outcomes) - len(answered),
        "small_share": _share([o.tier == "small" for o in answered]),
        "source_hit_rate": _share([o.source_hit for o in answered if o.kind == "grounded"]),
        "routing_accuracy": _share([o.routed_right for o in answered]),
        "accuracy_by_tier": {t: _share([o.correct for o in answered if o.tier == t]) for t in ("small", "large")},
        "accuracy_by_kind": {k: _share([o.correct for o in answered if o.kind == k]) for k in KINDS},
        "escalations": {r: sum(1 for o in answered if o.reason == r) for r in sorted({o.reason for o in answered if o.reason})},
        "fallbacks": {r: sum(1 for o in answered if o.fallback == r) for r in sorted({o.fallback for o in answered if o.fallback})},
        "first_token_ms_p50": round(statistics.median(firsts), 1) if firsts else None,
        "total_ms_p50": round(statistics.median(totals), 1) if totals else None,
        "cost_usd": round(cost, 6), "all_large_cost_usd": round(all_large, 6),
        "cost_vs_all_large": round(cost / all_large, 3) if all_large else None,
    }


def print_table(outcomes: list[Outcome], summary: dict[str, Any]) -> None:
    print(f"{'id':<10} {'kind':<10} {'tier':<6} {'reason':<15} {'src':<4} {'ok':<4} {'ttft ms':>8} {'total ms':>9} {'cost $':>10}")
    for o in outcomes:
        if o.error:
            print(f"{o.id:<10} {o.kind:<10} error: {o.error}")
            continue
        print(f"{o.id:<10} {o.kind:<10} {o.tier:<6} {(o.reason or o.fallback or '-'):<15} {'yes' if o.source_hit else 'no':<4} "
              f"{'yes' if o.correct else 'no':<4} {o.first_token_ms or 0:>8.0f} {o.total_ms:>9.0f} {o.cost_usd:>10.6f}")
    print()
    for key, value in summary.items():
        print(f"{key:>20}: {value}")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("qa_file", type=Path, help="QA JSONL file.")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="WebSocket URL of the service.")
    parser.add_argument("--tier", choices=("auto", "small", "large"), default="auto", help="Force a tier for every question.")
    parser.add_argument("--json", action="store_true", help="Print every outcome and the summary as JSON.")
    add_arguments(parser, ("api_token", "data_dir", "large_price_in_per_m", "large_price_out_per_m"))
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        settings = from_args(args)
        rows = load_questions(args.qa_file)
    except (SettingsError, ValueError, OSError) as exc:
        print(f"smallfirst eval: {exc}", file=sys.stderr)
        return 2
    prices = (settings.large_price_in_per_m, settings.large_price_out_per_m)
    try:
        outcomes = asyncio.run(run_all(args.url, rows, args.tier, prices, client_token(settings)))
    except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
        print(f"smallfirst eval: cannot evaluate against {args.url}: {exc}", file=sys.stderr)
        return 1
    summary = summarise(outcomes)
    if args.json:
        print(json.dumps({"outcomes": [asdict(o) for o in outcomes], "summary": summary}))
    else:
        print_table(outcomes, summary)
    return 0
