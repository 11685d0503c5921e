"""Follows each request of one connection from its start to its ``done`` or ``error`` frame:
Prometheus series, and one log line per finished request (kind, tier, route reason, timings)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from smallfirst.service.server.metrics import Metrics

log = logging.getLogger("smallfirst.requests")


@dataclass
class Trace:
    """What one request's frames said so far."""

    kind: str
    received: float
    token_times: list[float] = field(default_factory=list)
    route: str | None = None  # the escalation reason, None for a request the small tier took
    fallback: str | None = None


class RequestWatch:
    """One connection's requests in flight.

    A client may reuse the id of a suggestion it superseded before that one's ``done`` went out,
    so each id holds its traces oldest first: frames belong to the newest, ``done`` and ``error``
    end the oldest (a superseded request ends first: it stops within one step)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.metrics = metrics
        self.connection_id = uuid.uuid4().hex[:12]
        self._traces: dict[str, list[Trace]] = {}

    def start(self, request_id: str, kind: str, received: float) -> None:
        self._traces.setdefault(request_id, []).append(Trace(kind, received))
        if self.metrics is not None:
            self.metrics.in_flight.labels(kind=kind).inc()

    def _end(self, request_id: str) -> Trace | None:
        traces = self._traces.get(request_id)
        if not traces:
            return None
        trace = traces.pop(0)
        if not traces:
            del self._traces[request_id]
        return trace

    def sent(self, frame: dict[str, Any]) -> None:
        """A frame went out: note token times and why a request changed tier."""
        traces = self._traces.get(frame.get("id"))  # type: ignore[arg-type]
        if not traces:
            return
        trace = traces[-1]
        kind = frame.get("type")
        if kind == "token":
            trace.token_times.append(time.perf_counter())
        elif kind == "sources" and self.metrics is not None:
            self.metrics.sources.observe(time.perf_counter() - trace.received)
        elif kind == "escalated":
            trace.route = trace.route or frame["reason"]
            if self.metrics is not None:
                self.metrics.escalations.labels(reason=frame["reason"]).inc()
        elif kind == "fallback":
            trace.fallback = frame["reason"]
            if self.metrics is not None:
                self.metrics.fallbacks.labels(reason=frame["reason"]).inc()

    def finish(self, done: dict[str, Any]) -> None:
        """The request's ``done`` frame: observe it and log one line."""
        trace = self._end(done["id"])
        if trace is None:
            return
        tier, timings, usage = done["tier"], done["timings_ms"], done["usage"]
        m = self.metrics
        if m is not None:
            m.in_flight.labels(kind=trace.kind).dec()
            m.requests.labels(kind=trace.kind, tier=tier, outcome=done["finish"]).inc()
            m.duration.labels(kind=trace.kind, tier=tier).observe(timings["total"] / 1000)
            if timings.get("first_token") is not None:
                m.first_token.labels(kind=trace.kind, tier=tier).observe(timings["first_token"] / 1000)
            for earlier, later in zip(trace.token_times, trace.token_times[1:]):
                m.inter_token.labels(kind=trace.kind, tier=tier).observe(later - earlier)
            if timings.get("queue") is not None:
                m.scheduler_wait.labels(kind=trace.kind).observe(timings["queue"] / 1000)
            m.tokens.labels(tier=tier, type="prompt").inc(usage["prompt_tokens"])
            m.tokens.labels(tier=tier, type="completion").inc(usage["completion_tokens"])
            m.cost.labels(tier=tier).inc(done["cost_usd"])
        log.info("%s %s finished: %s on the %s tier in %.1f ms", trace.kind, done["id"], done["finish"], tier,
                 timings["total"], extra={
                     "event": "request", "request_id": done["id"], "connection_id": self.connection_id,
                     "kind": trace.kind, "tier": tier, "route_reason": trace.route, "fallback_reason": trace.fallback,
                     "finish": done["finish"], "timings_ms": timings, "usage": usage, "cost_usd": done["cost_usd"],
                 })

    def fail(self, request_id: str, code: str) -> None:
        """The request ended with an ``error`` frame."""
        trace = self._end(request_id)
        if trace is None:
            return
        if self.metrics is not None:
            self.metrics.in_flight.labels(kind=trace.kind).dec()
            self.metrics.requests.labels(kind=trace.kind, tier="none", outcome="error").inc()
        log.info("%s %s failed: %s", trace.kind, request_id, code, extra={
            "event": "request", "request_id": request_id, "connection_id": self.connection_id, "kind": trace.kind,
            "route_reason": trace.route, "finish": "error", "error": code,
            "timings_ms": {"total": round((time.perf_counter() - trace.received) * 1000, 1)},
        })

    def close(self) -> None:
        """The connection ended: requests never finished leave the in-flight gauge."""
        for traces in self._traces.values():
            for trace in traces:
                if self.metrics is not None:
                    self.metrics.in_flight.labels(kind=trace.kind).dec()
        self._traces.clear()
