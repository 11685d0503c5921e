"""Graceful overload: answers at 4x the small model's capacity, with typists alongside, once with
the wait budget (the default, 5 s) and once without it (a budget no wait reaches: only the queue
limit of 16 applies, the behaviour before admission control), in one run.

1. Ingests docs/ and starts `smallfirst serve` (no large tier: an answer over budget gets busy).
2. Capacity: one asker back to back for 20 s; capacity = 1 / its median end-to-end time.
3. `smallfirst loadtest` with asks arriving at 4x capacity (or at `--rate`) and typists at 0.05
   sessions/s for 40 s.
4. The same against a service without the budget.
Prints the figures last, in one plain line, with the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import BIN, ROOT, bench_env, ingest, service

OVERLOAD = 4.0
TYPISTS_PER_S = 0.05  # about one typist at a time: keystrokes come first, so heavy typing starves answers by design
DURATION_S = 40
TYPED = "The scheduler runs every heavy computation on one worker thread, so keystrokes come first."


def loadtest(port: int, out: Path, *args: str) -> dict:
    texts = out.with_suffix(".txt")
    texts.write_text(TYPED + "\n")
    subprocess.run([str(BIN / "smallfirst"), "loadtest", "--url", f"ws://127.0.0.1:{port}/ws", "--texts", str(texts),
                    "--json", str(out), "--timeout", "60", *args], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["summary"]


def overloaded(env: dict[str, str], tmp: Path, name: str, rate: float | None) -> tuple[float, dict]:
    """(capacity measured here, the summary of the overload run at ``rate`` or at 4x that capacity)."""
    with service(env) as port:
        closed = loadtest(port, tmp / f"{name}-capacity.json", "--workload", "ask", "--concurrency", "1",
                          "--duration", "20", "--warmup", "3")["ask"]
        capacity = 1000.0 / closed["e2e_ms"]["p50"]
        asks = rate if rate is not None else OVERLOAD * capacity
        summary = loadtest(port, tmp / f"{name}.json", "--workload", f"ask:{asks:.3f},type:{TYPISTS_PER_S}",
                           "--rate", f"{asks + TYPISTS_PER_S:.3f}", "--duration", str(DURATION_S), "--warmup", "3")
    return capacity, {"asks_per_s": asks, **summary}


def describe(name: str, capacity: float, s: dict) -> str:
    ask, typing = s["ask"], s["type"]
    refused = ask["refusal_ms"]
    return (f"{name:>10}: capacity {capacity:.2f} asks/s, asks at {s['asks_per_s']:.2f}/s: sent {ask['sent']} "
            f"answered {ask['completed']} busy {ask['errors'].get('busy', 0)} timeouts {ask['timeouts']}; "
            f"admitted ttft p50/p95 {ask['ttft_ms']['p50']}/{ask['ttft_ms']['p95']} ms; refusals p50/p95/max "
            f"{refused['p50']}/{refused['p95']}/{refused['max']} ms; given up in the queue {ask['shed_ms']['n']} "
            f"(after p50 {ask['shed_ms']['p50']} ms); keystroke ttft p50/p95 "
            f"{typing['ttft_ms']['p50']}/{typing['ttft_ms']['p95']} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=None,
                        help="Asks per second (default: 4x the capacity measured in the run); fixed, to compare builds.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = bench_env(tmp / "data")
        ingest(ROOT / "docs", env)
        capacity, budget = overloaded(env, tmp, "budget", args.rate)
        print(describe("budget", capacity, budget), flush=True)
        _, unbounded = overloaded({**env, "SMALLFIRST_ANSWER_WAIT_BUDGET_S": "1000000"}, tmp, "no-budget",
                                  budget["asks_per_s"])
        print(describe("no budget", capacity, unbounded), flush=True)
    b, u = budget["ask"], unbounded["ask"]
    ratio = (u["ttft_ms"]["p95"] or float("nan")) / (b["ttft_ms"]["p95"] or float("nan"))
    print(f"overload asks_per_s={budget['asks_per_s']:.2f} admitted_ttft_p95_ms={b['ttft_ms']['p95']} "
          f"no_budget_ttft_p95_ms={u['ttft_ms']['p95']} ttft_p95_ratio={ratio:.1f} "
          f"refusal_p95_ms={b['refusal_ms']['p95']} refusal_max_ms={b['refusal_ms']['max']} shed={b['shed_ms']['n']} "
          f"answered={b['completed']} timeouts={b['timeouts']} "
          f"no_budget_timeouts={u['timeouts']} keystroke_ttft_p95_ms={budget['type']['ttft_ms']['p95']} "
          f"no_budget_keystroke_ttft_p95_ms={unbounded['type']['ttft_ms']['p95']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
