"""Figures from the samples: percentiles, counts, goodput; and the --fail-if conditions."""

from __future__ import annotations

import operator
import re
from collections import Counter
from typing import Any, Iterable

from smallfirst.service.tools.loadtest.samples import Sample
from smallfirst.service.percentiles import percentile  # the project's one definition (re-exported for callers here)

PERCENTILES = (50, 95, 99)
_CONDITION = re.compile(r"^\s*([a-z_.0-9]+)\s*(<=|>=|<|>|==)\s*(-?[0-9.]+)\s*$")
_OPS = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge, "==": operator.eq}


def distribution(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{q}": _rounded(percentile(values, q)) for q in PERCENTILES}
    out["max"] = round(max(values), 2) if values else None
    out["n"] = len(values)
    return out


def summarise(samples: Iterable[Sample], window_s: float, slo_ttft_ms: float, slo_itl_ms: float) -> dict[str, Any]:
    """Figures for one set of samples (warm-up samples excluded)."""
    measured = [s for s in samples if not s.warmup]
    answered = [s for s in measured if s.error is None and not s.timeout]
    ttft = [s.ttft_ms for s in answered if s.ttft_ms is not None]
    itl = [v for s in answered for v in s.itl_ms]
    e2e = [s.e2e_ms for s in answered if s.e2e_ms is not None and s.finish != "cancelled"]
    sources = [s.sources_ms for s in answered if s.sources_ms is not None]
    busy = [(s.e2e_ms, s.sources is not None) for s in measured if s.error == "busy" and s.e2e_ms is not None]
    refusals = [ms for ms, sourced in busy if not sourced]  # refused at admission, before retrieval
    shed = [ms for ms, sourced in busy if sourced]  # admitted, then given up in the queue
    tokens = sum(s.tokens for s in measured)
    good = [
        s for s in answered
        if s.ttft_ms is not None and s.ttft_ms <= slo_ttft_ms and max(s.itl_ms, default=0.0) <= slo_itl_ms
        and (s.workload != "type" or s.delivered)
    ]
    errors = Counter(s.error.split(":")[0] for s in measured if s.error)
    tiers = Counter(s.tier for s in answered if s.tier)
    out: dict[str, Any] = {
        "sent": sum(1 for s in measured if s.sent is not None),
        "completed": sum(1 for s in answered if s.finish in ("stop", "length")),
        "cancelled": sum(1 for s in answered if s.finish == "cancelled"),
        "errors": dict(errors), "timeouts": sum(1 for s in measured if s.timeout),
        "sources_ms": distribution(sources), "ttft_ms": distribution(ttft), "itl_ms": distribution(itl),
        "e2e_ms": distribution(e2e), "refusal_ms": distribution(refusals),
        "shed_ms": distribution(shed), "tokens": tokens,
        "tokens_per_s": round(tokens / window_s, 2) if window_s > 0 else None,
        "goodput": round(len(good) / len(measured), 4) if measured else None,
        "tiers": dict(tiers), "cost_usd": round(sum(s.cost_usd for s in measured), 6),
    }
    if any(s.workload == "ask" for s in measured):
        out["revised"] = sum(1 for s in answered if s.revised)
        out["escalations"] = dict(Counter(s.escalation for s in answered if s.escalation))
    if any(s.workload == "type" for s in measured):
        out["delivered"] = sum(1 for s in measured if s.delivered)
        out["stale_dropped"] = sum(1 for s in measured if s.stale)
        # Of those: text that came after the next keystroke, and requests withdrawn before any came.
        out["arrived_late"] = sum(1 for s in measured if s.stale and s.first_token is not None)
    return out


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Names usable in --fail-if: p95_ttft_ms, ask.p99_itl_ms, error_rate, type.goodput, ..."""
    flat: dict[str, float] = {}
    for scope, figures in summary.items():
        prefix = "" if scope == "all" else f"{scope}."
        for metric in ("sources_ms", "ttft_ms", "itl_ms", "e2e_ms", "refusal_ms", "shed_ms"):
            for key, value in figures[metric].items():
                if key != "n" and value is not None:
                    flat[f"{prefix}{key}_{metric}"] = float(value)
        sent = figures["sent"] or 1
        flat[f"{prefix}error_rate"] = (sum(figures["errors"].values()) + figures["timeouts"]) / sent
        for key in ("goodput", "tokens_per_s", "sent", "completed", "timeouts", "stale_dropped", "arrived_late", "delivered", "cost_usd", "revised"):
            if figures.get(key) is not None:
                flat[f"{prefix}{key}"] = float(figures[key])
    return flat


def parse_condition(text: str) -> tuple[str, str, float]:
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(f"cannot read condition {text!r}; write it like p95_ttft_ms>300")
    return match.group(1), match.group(2), float(match.group(3))


def failed_conditions(conditions: list[tuple[str, str, float]], metrics: dict[str, float]) -> list[str]:
    """The conditions that hold (a missing metric is reported as holding, so a gate never passes blind)."""
    held = []
    for name, op, limit in conditions:
        value = metrics.get(name)
        if value is None:
            held.append(f"{name}{op}{limit:g} (no such figure in this run)")
        elif _OPS[op](value, limit):
            held.append(f"{name}{op}{limit:g} (measured {value:g})")
    return held


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
