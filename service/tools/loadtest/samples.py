"""What one load-test request saw, and the protocol checks made while it ran."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One request: times are seconds since the run started, measured from its scheduled send."""

    workload: str
    id: str
    scheduled: float
    sent: float | None = None
    sources: float | None = None
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    done: float | None = None
    tokens: int = 0
    finish: str | None = None
    tier: str | None = None
    cost_usd: float = 0.0
    error: str | None = None
    timeout: bool = False
    stale: bool = False
    delivered: bool = False
    warmup: bool = False
    escalation: str | None = None  # the router's reason, before any small-model token
    revised: bool = False  # the small answer failed its support check and was replaced
    supported: bool | None = None
    text: str = ""  # a suggestion's text received so far (answers keep none)

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else (self.first_token - self.scheduled) * 1000

    @property
    def sources_ms(self) -> float | None:
        return None if self.sources is None else (self.sources - self.scheduled) * 1000

    @property
    def e2e_ms(self) -> float | None:
        return None if self.done is None else (self.done - self.scheduled) * 1000

    @property
    def itl_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(self.token_times, self.token_times[1:])]

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload, "id": self.id, "scheduled_s": round(self.scheduled, 4),
            "sources_ms": _r(self.sources_ms), "ttft_ms": _r(self.ttft_ms), "e2e_ms": _r(self.e2e_ms),
            "itl_ms": [round(v, 2) for v in self.itl_ms], "tokens": self.tokens, "finish": self.finish,
            "tier": self.tier, "cost_usd": self.cost_usd, "error": self.error, "timeout": self.timeout,
            "stale": self.stale, "delivered": self.delivered, "warmup": self.warmup,
            "escalation": self.escalation, "revised": self.revised, "supported": self.supported,
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class ProtocolChecker:
    """Counts frames that break the protocol: unknown ids, tokens after done, seq out of order."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._live: dict[str, int] = {}
        self._finished: set[str] = set()

    def opened(self, request_id: str) -> None:
        self._live[request_id] = 0

    def check(self, frame: dict[str, Any]) -> bool:
        """Whether the frame is acceptable; records the violation otherwise."""
        kind, request_id = frame.get("type"), frame.get("id")
        if kind in ("ready", "pong") or (kind == "error" and request_id is None):
            return True
        if request_id in self._finished:
            self.errors.append(f"{kind} after done for {request_id}")
            return False
        if request_id not in self._live:
            self.errors.append(f"{kind} for unknown id {request_id!r}")
            return False
        if kind == "token":
            expected = self._live[request_id]
            if frame.get("seq") != expected:
                self.errors.append(f"token seq {frame.get('seq')} for {request_id}, expected {expected}")
                self._live[request_id] = int(frame.get("seq", expected)) + 1
                return False
            self._live[request_id] = expected + 1
        if kind in ("done", "error"):
            del self._live[request_id]
            self._finished.add(request_id)
        return True
