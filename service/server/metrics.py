"""Prometheus metrics, served at ``GET /metrics``.

One :class:`Metrics` per app, each with its own registry (several apps in one process never
clash). Requests are observed as they finish (:mod:`smallfirst.service.server.observe`); the scheduler reports
each step; gauges and the ingest counters are read from the runtime at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from smallfirst.service.scheduler import Priority

if TYPE_CHECKING:
    from smallfirst.service.server.limits import ConnectionLimiter
    from smallfirst.service.server.runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a 20 ms keystroke suggestion to a 30 s escalated answer.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
BREAKER_STATES = ("closed", "half_open", "open")
JOB_STATES = ("queued", "running", "done", "failed")
JUNK_REASONS = ("run", "repeat", "heading")


class Metrics:
    """The service's series, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.first_token = Histogram("smallfirst_time_to_first_token_seconds", "From a request's arrival to its first token.",
                                     ["kind", "tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("smallfirst_request_duration_seconds", "From a request's arrival to its done frame.",
                                  ["kind", "tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("smallfirst_inter_token_seconds", "Time between consecutive token frames of a request.",
                                     ["kind", "tier"], buckets=STEP_BUCKETS, registry=r)
        self.scheduler_wait = Histogram("smallfirst_scheduler_wait_seconds",
                                        "Time a request's first model step waited for the CPU scheduler.",
                                        ["kind"], buckets=STEP_BUCKETS, registry=r)
        self.step = Histogram("smallfirst_scheduler_step_seconds", "Duration of one CPU scheduler step.",
                              ["priority"], buckets=STEP_BUCKETS, registry=r)
        self.sources = Histogram("smallfirst_time_to_sources_seconds", "From an answer's arrival to its sources frame.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("smallfirst_requests", "Finished requests by kind, final tier and outcome.",
                                ["kind", "tier", "outcome"], registry=r)
        self.escalations = Counter("smallfirst_escalations", "Answers sent to another tier, by reason.", ["reason"], registry=r)
        self.fallbacks = Counter("smallfirst_fallbacks", "Answers a failing tier handed over, by reason.", ["reason"], registry=r)
        self.tokens = Counter("smallfirst_tokens", "Prompt and completion tokens by tier.", ["tier", "type"], registry=r)
        self.cost = Counter("smallfirst_cost_usd", "Priced cost of the tokens by tier.", ["tier"], registry=r)
        self.in_flight = Gauge("smallfirst_requests_in_flight", "Requests started and not finished, by kind.", ["kind"], registry=r)

    def observe_step(self, priority: int, seconds: float) -> None:
        """One scheduler step ran (called on the scheduler's thread; prometheus-client is thread-safe)."""
        try:
            name = Priority(priority).name.lower()
        except ValueError:
            name = str(priority)
        self.step.labels(priority=name).observe(seconds)

    def watch_runtime(self, runtime: "Runtime", connections: "ConnectionLimiter") -> None:
        """Read the gauges and ingest counters from ``runtime`` at each scrape."""
        self.registry.register(RuntimeCollector(runtime, connections))
        runtime.scheduler.on_step = self.observe_step

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RuntimeCollector(Collector):
    """Series whose value lives in the runtime: read when scraped, never kept twice."""

    def __init__(self, runtime: "Runtime", connections: "ConnectionLimiter") -> None:
        self._runtime = runtime
        self._connections = connections

    def describe(self) -> list[Any]:
        return []  # unchecked: the series depend on what has loaded

    def collect(self) -> Iterator[Any]:
        rt = self._runtime
        c = rt.components  # None while loading: the series read 0 until then
        yield _gauge("smallfirst_connections", "Open WebSocket connections.",
                     lambda: self._connections.open)
        yield _gauge("smallfirst_answer_queue_depth", "Answers waiting for or holding the small answer model.",
                     lambda: c.answer_model.waiting if c is not None else 0)
        yield _gauge("smallfirst_answer_predicted_wait_seconds",
                     "Predicted wait for a new answer's first token on the small model (admission compares it to the budget).",
                     lambda: c.answer_model.predicted_wait_s() if c is not None else 0.0)
        yield _gauge("smallfirst_autocomplete_slots_in_use", "Autocomplete slots owned by a typist.",
                     lambda: c.autocomplete.slots_in_use if c is not None else 0)
        yield _gauge("smallfirst_ready", "1 once the store, embedder and models are loaded.", lambda: int(rt.ready))
        breaker = GaugeMetricFamily("smallfirst_breaker_state", "The large tier's circuit breaker: 1 for its current state.",
                                    labels=["state"])
        current = c.large.breaker.state if c is not None and c.large is not None else None
        for state in BREAKER_STATES:
            breaker.add_metric([state], 1.0 if current == state else 0.0)
        yield breaker
        jobs = GaugeMetricFamily("smallfirst_ingest_jobs", "Ingest jobs the worker remembers, by state.", labels=["state"])
        worker = c.worker if c is not None else None
        for state in JOB_STATES:
            jobs.add_metric([state], sum(1 for j in worker.jobs.values() if j.state == state) if worker else 0)
        yield jobs
        totals = worker.totals if worker is not None else {}
        files = CounterMetricFamily("smallfirst_ingest_files", "Files seen by finished ingest jobs, by result.",
                                    labels=["result"])
        for result in ("added", "changed", "unchanged", "removed", "failed"):
            files.add_metric([result], totals.get(f"files_{result}", 0))
        yield files
        autocomplete = c.autocomplete if c is not None else None
        dropped = CounterMetricFamily("smallfirst_suggestions_dropped",
                                      "Suggestions cut as junk before they were shown, by reason (run, repeat, heading).",
                                      labels=["reason"])
        for reason in JUNK_REASONS:
            dropped.add_metric([reason], autocomplete.dropped.get(reason, 0) if autocomplete is not None else 0)
        yield dropped
        yield CounterMetricFamily("smallfirst_suggestions_copied",
                                  "Suggestions copied from a document passage, with no model step.",
                                  value=autocomplete.copies if autocomplete is not None else 0)
        yield CounterMetricFamily("smallfirst_autocomplete_prefills_preempted",
                                  "Background prefills (new grounding, the next text window) stopped to free a slot for a keystroke.",
                                  value=autocomplete.preempted if autocomplete is not None else 0)
        chunks = CounterMetricFamily("smallfirst_ingest_chunks", "Chunks written or deleted by ingest jobs.", labels=["result"])
        for result in ("written", "deleted"):
            chunks.add_metric([result], totals.get(f"chunks_{result}", 0))
        yield chunks


def _gauge(name: str, doc: str, read: Callable[[], float]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(read()))
