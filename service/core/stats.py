"""In-memory aggregates per tier, served at ``GET /api/stats``."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from smallfirst.service.percentiles import percentile


def _percentile(values: list[float], q: float) -> float | None:
    found = percentile(values, q * 100)
    return None if found is None else round(found, 1)


@dataclass
class TierStats:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    first_token_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2048))
    total_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def as_dict(self) -> dict[str, Any]:
        first, total = list(self.first_token_ms), list(self.total_ms)
        return {
            "requests": self.requests, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 8),
            "first_token_ms": {"p50": _percentile(first, 0.5), "p95": _percentile(first, 0.95)},
            "total_ms": {"p50": _percentile(total, 0.5), "p95": _percentile(total, 0.95)},
        }


class Stats:
    """Answers and completions by the tier that produced their final tokens."""

    def __init__(self) -> None:
        self.tiers: dict[str, TierStats] = {"small": TierStats(), "large": TierStats()}
        self.escalations: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.finishes: Counter[str] = Counter()
        self.checks: Counter[str] = Counter()  # small answers the support check passed or failed
        self.refused = 0  # answers refused 'busy' at once: the small model's predicted wait was over budget

    def record(self, done: dict[str, Any]) -> None:
        tier = self.tiers.setdefault(done["tier"], TierStats())
        tier.requests += 1
        tier.prompt_tokens += done["usage"]["prompt_tokens"]
        tier.completion_tokens += done["usage"]["completion_tokens"]
        tier.cost_usd += done["cost_usd"]
        timings = done["timings_ms"]
        if timings.get("first_token") is not None:
            tier.first_token_ms.append(timings["first_token"])
        tier.total_ms.append(timings["total"])
        self.finishes[done["finish"]] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "tiers": {name: t.as_dict() for name, t in self.tiers.items()},
            "total_cost_usd": round(sum(t.cost_usd for t in self.tiers.values()), 8),
            "escalations": dict(self.escalations), "fallbacks": dict(self.fallbacks), "finishes": dict(self.finishes),
            "support_checks": dict(self.checks), "refused_over_budget": self.refused,
        }
