"""``smallfirst eval QA.jsonl``: tiers, routing, sources, answers, latency and cost, through the WebSocket.

Each line of the QA file: ``{"id", "question", "kind": "grounded"|"ungrounded"|"hard",
"shape": "value"|"name"|"description"|"yesno"|"count", "pages": [expected source file names],
"answer_any": [accepted answers]}``. An accepted answer matches as whole words, case and spacing
aside ("8" is not in "18"); a yes/no question's answer must start with its "yes" or "no".

Besides routing, accuracy, latency and cost, it reports how far the answer check can be trusted:
the precision-coverage curve of the check's confidence (for each threshold, the share of grounded
questions whose small answer would be marked supported, and the share of those that are right),
and the service's own operating point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smallfirst.credentials import client_token
from smallfirst.settings import SettingsError, add_arguments, from_args

KINDS = ("grounded", "ungrounded", "hard")
SHAPES = ("value", "name", "description", "yesno", "count")


@dataclass
class Outcome:
    id: str
    kind: str
    shape: str | None = None
    tier: str = ""
    reason: str | None = None  # why the router escalated before any small-model token
    fallback: str | None = None
    revised: bool = False  # the small answer failed its check and was replaced
    supported: bool | None = None  # the check's verdict on the small tier's answer, when it generated one
    confidence: float | None = None  # the check's probability that the small answer is supported
    picked: str | None = None  # the shape of the span the small tier picked from the evidence, if it picked one
    check_features: dict[str, float] | None = None  # what the check's confidence was computed from
    small_answer: str | None = None
    small_correct: bool | None = None
    flagged: bool = False
    source_hit: bool = False
    correct: bool = False
    routed_right: bool = False
    sources_ms: float | None = None
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
        if row.get("shape") is not None and row["shape"] not in SHAPES:
            raise ValueError(f"{path}:{number}: 'shape' must be one of {SHAPES}")
        row.setdefault("id", f"q{number}")
        row.setdefault("pages", [])
        row.setdefault("answer_any", [])
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no questions")
    return rows


_PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
                        "\u00a0": " "})


def _plain(text: str) -> str:
    return " ".join(text.translate(_PLAIN).lower().split())


def _matches(text: str, accepted: list[str], shape: str | None = None) -> bool:
    """Whether ``text`` gives one of the accepted answers, as whole words."""
    text = _plain(text)
    if shape == "yesno":
        first = re.match(r"\W*(\w+)", text)
        return first is not None and first.group(1) in {_plain(a) for a in accepted}
    for answer in (_plain(a) for a in accepted if a.strip()):
        left = r"(?<!\w)" if answer[0].isalnum() or answer[0] == "_" else ""
        right = r"(?!\w)" if answer[-1].isalnum() or answer[-1] == "_" else ""
        if re.search(left + re.escape(answer) + right, text):
            return True
    return False


async def ask_one(ws: Any, row: dict[str, Any], tier: str, prices: tuple[float, float], collection: str | None = None) -> Outcome:
    out = Outcome(id=str(row["id"]), kind=row["kind"], shape=row.get("shape"))
    frame: dict[str, Any] = {"type": "ask", "id": out.id, "question": row["question"]}
    if tier != "auto":
        frame["tier"] = tier
    if collection:
        frame["collection"] = collection
    sent = time.perf_counter()
    await ws.send(json.dumps(frame))
    pieces: list[str] = []
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 300))
        if msg.get("id") != out.id:
            continue
        kind = msg["type"]
        if kind == "sources":
            out.sources_ms = round((time.perf_counter() - sent) * 1000, 1)
            out.sources = [Path(s["doc_id"]).name for s in msg["sources"]]
        elif kind == "escalated":
            if msg["reason"] == "unsupported_answer":
                out.revised = True
                pieces.clear()  # what follows replaces the answer shown so far
            else:
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
            out.supported = msg.get("supported")
            out.small_answer = msg.get("small_answer")
            out.confidence = msg.get("confidence")
            out.picked = msg.get("picked")
            out.check_features = msg.get("check_features")
            out.flagged = bool(msg.get("flagged"))
            usage = msg["usage"]
            out.all_large_cost_usd = (usage["prompt_tokens"] * prices[0] + usage["completion_tokens"] * prices[1]) / 1e6
            break
    out.total_ms = round((time.perf_counter() - sent) * 1000, 1)
    out.answer = "".join(pieces).strip()
    out.source_hit = bool(set(row["pages"]) & set(out.sources))
    accepted = list(row["answer_any"])
    out.correct = _matches(out.answer, accepted, out.shape) if accepted and not out.flagged else False
    if out.small_answer is not None:
        out.small_correct = _matches(out.small_answer, accepted, out.shape) if accepted else False
    escalated = out.reason is not None
    out.routed_right = escalated if row["kind"] in ("ungrounded", "hard") else not escalated
    return out


CALIBRATION_WAIT_S = 300.0


async def wait_for_calibration(url: str, headers: dict[str, str] | None) -> None:
    """Wait while the service calibrates a grounding threshold (it starts one for its collection as
    it becomes ready). Until then it routes with the default threshold, so questions asked right
    after a start would be routed unlike the rest."""
    import httpx

    base = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rsplit("/ws", 1)[0]
    deadline = time.monotonic() + CALIBRATION_WAIT_S
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        while True:
            try:
                response = await client.get(base + "/api/stats")
            except httpx.HTTPError:
                return  # the socket will say what is wrong
            if response.status_code != 200:
                print(f"smallfirst eval: cannot read /api/stats (HTTP {response.status_code}); "
                      "not waiting for calibration", file=sys.stderr)
                return
            if not response.json().get("grounding", {}).get("calibrating"):
                return
            if time.monotonic() > deadline:
                print("smallfirst eval: the grounding threshold is still being calibrated; evaluating anyway",
                      file=sys.stderr)
                return
            await asyncio.sleep(0.5)


async def run_all(url: str, rows: list[dict[str, Any]], tier: str, prices: tuple[float, float], token: str | None,
                  collection: str | None = None) -> list[Outcome]:
    import websockets

    headers = {"Authorization": f"Bearer {token}"} if token else None
    await wait_for_calibration(url, headers)
    outcomes = []
    async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"unexpected first frame: {ready}")
        for i, row in enumerate(rows, 1):
            outcomes.append(await ask_one(ws, row, tier, prices, collection))
            print(f"\r{i}/{len(rows)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return outcomes


def _share(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def _p50(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def trust_curve(outcomes: list[Outcome]) -> list[dict[str, float]]:
    """For each threshold on the check's confidence (highest first): the share of grounded
    questions whose small answer reaches it (coverage) and the share of those that are right
    (precision). A grounded question the router escalated before the small tier answered, or
    whose small answer has no confidence, is never covered."""
    grounded = [o for o in outcomes if o.error is None and o.kind == "grounded"]
    scored = sorted(((o.confidence, bool(o.small_correct)) for o in grounded
                     if o.confidence is not None and o.reason is None), key=lambda p: -p[0])
    points: list[dict[str, float]] = []
    right = 0
    for i, (confidence, correct) in enumerate(scored, 1):
        right += correct
        if i < len(scored) and scored[i][0] == confidence:
            continue  # a threshold covers every answer at its confidence
        points.append({"threshold": round(confidence, 4), "coverage": round(i / len(grounded), 3),
                       "precision": round(right / i, 3)})
    return points


def operating_point(outcomes: list[Outcome]) -> dict[str, float | None]:
    """The service's own decision: grounded questions whose small answer it marked supported."""
    grounded = [o for o in outcomes if o.error is None and o.kind == "grounded"]
    covered = [o for o in grounded if o.reason is None and o.supported]
    return {"coverage": _share([o in covered for o in grounded]) if grounded else None,
            "precision": _share([bool(o.small_correct) for o in covered])}


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    """Routing, accuracy per tier, and how far the support check can be trusted."""
    answered = [o for o in outcomes if o.error is None]
    totals = [o.total_ms for o in answered]
    cost = sum(o.cost_usd for o in answered)
    all_large = sum(o.all_large_cost_usd for o in answered)
    grounded = [o for o in answered if o.kind == "grounded"]
    checked = [o for o in answered if o.supported is not None]  # every answer the small tier generated
    right = [o for o in checked if o.small_correct]
    wrong = [o for o in checked if not o.small_correct]
    supported = [o for o in checked if o.supported]
    return {
        "questions": len(outcomes), "errors": len(outcomes) - len(answered),
        "grounded_small_first": _share([o.reason is None for o in grounded]),
        "grounded_small_final": _share([o.tier == "small" and not o.revised for o in grounded]),
        "small_share": _share([o.tier == "small" and not o.flagged for o in answered]),
        "source_hit_rate": _share([o.source_hit for o in grounded]),
        "routing_accuracy": _share([o.routed_right for o in answered]),
        "ungrounded_hard_escalated": _share([o.reason is not None for o in answered if o.kind != "grounded"]),
        "accuracy_by_tier": {t: _share([o.correct for o in answered if o.tier == t and not o.flagged]) for t in ("small", "large")},
        "accuracy_by_kind": {k: _share([o.correct for o in answered if o.kind == k]) for k in KINDS},
        "small_accuracy_by_shape": {sh: _share([bool(o.small_correct) for o in checked if o.shape == sh])
                                    for sh in SHAPES if any(o.shape == sh for o in checked)},
        "picked": sum(1 for o in checked if o.picked),
        "small_generated": len(checked),
        "grounded_small_accuracy": _share([bool(o.small_correct) for o in grounded if o.reason is None and o.supported is not None]),
        "small_accuracy": _share([bool(o.small_correct) for o in checked]),
        "small_supported_share": _share([bool(o.supported) for o in checked]),
        "check_precision": _share([bool(o.small_correct) for o in supported]),
        "check_recall": _share([not o.supported for o in wrong]),
        "check_false_alarms": _share([not o.supported for o in right]),
        "operating_point": operating_point(answered),
        "revised": sum(1 for o in answered if o.revised),
        "flagged": sum(1 for o in answered if o.flagged),
        "escalations": {r: sum(1 for o in answered if o.reason == r) for r in sorted({o.reason for o in answered if o.reason})},
        "fallbacks": {r: sum(1 for o in answered if o.fallback == r) for r in sorted({o.fallback for o in answered if o.fallback})},
        "sources_ms_p50": _p50([o.sources_ms for o in answered]),
        "first_token_ms_p50": _p50([o.first_token_ms for o in answered]),
        "first_token_ms_p50_small": _p50([o.first_token_ms for o in answered if o.reason is None and o.supported is not None]),
        "total_ms_p50": round(statistics.median(totals), 1) if totals else None,
        "cost_usd": round(cost, 6), "all_large_cost_usd": round(all_large, 6),
        "cost_vs_all_large": round(cost / all_large, 3) if all_large else None,
    }


def print_table(outcomes: list[Outcome], summary: dict[str, Any]) -> None:
    def yn(value: bool | None) -> str:
        return "-" if value is None else "yes" if value else "no"

    print(f"{'id':<10} {'kind':<10} {'tier':<6} {'reason':<19} {'src':<4} {'ok':<4} {'small':<5} {'check':<5} "
          f"{'ttft ms':>8} {'total ms':>9} {'cost $':>10}")
    for o in outcomes:
        if o.error:
            print(f"{o.id:<10} {o.kind:<10} error: {o.error}")
            continue
        reason = o.reason or ("unsupported_answer" if o.revised else o.fallback) or "-"
        check = "-" if o.supported is None else "pass" if o.supported else "fail"
        print(f"{o.id:<10} {o.kind:<10} {o.tier:<6} {reason:<19} {yn(o.source_hit):<4} {yn(o.correct):<4} "
              f"{yn(o.small_correct):<5} {check:<5} {o.first_token_ms or 0:>8.0f} {o.total_ms:>9.0f} {o.cost_usd:>10.6f}")
    print()
    for key, value in summary.items():
        print(f"{key:>20}: {value}")
    print_curve(trust_curve(outcomes), summary["operating_point"])


def print_curve(points: list[dict[str, float]], operating: dict[str, float | None], rows: int = 10) -> None:
    """The precision-coverage curve, thinned to about ``rows`` thresholds, and the operating point."""
    if not points:
        print("no check confidences reported: no precision-coverage curve")
        return
    step = max(1, len(points) // rows)
    shown = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
    print(f"{'threshold':>10} {'coverage':>9} {'precision':>10}")
    for p in shown:
        print(f"{p['threshold']:>10.3f} {p['coverage']:>9.3f} {p['precision']:>10.3f}")
    print(f"{'operating':>10} {operating['coverage'] or 0:>9.3f} {operating['precision'] or 0:>10.3f}")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("qa_file", type=Path, help="QA JSONL file.")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="WebSocket URL of the service.")
    parser.add_argument("--tier", choices=("auto", "small", "large"), default="auto", help="Force a tier for every question.")
    parser.add_argument("--collection", default=None, help="Ask about this collection (default: the service's).")
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
        outcomes = asyncio.run(run_all(args.url, rows, args.tier, prices, client_token(settings), args.collection))
    except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
        print(f"smallfirst eval: cannot evaluate against {args.url}: {exc}", file=sys.stderr)
        return 1
    summary = summarise(outcomes)
    if args.json:
        print(json.dumps({"outcomes": [asdict(o) for o in outcomes], "summary": summary, "curve": trust_curve(outcomes)}))
    else:
        print_table(outcomes, summary)
    return 0
