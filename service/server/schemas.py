"""The shapes the HTTP routes return, as msgspec Structs, so ``/schema`` documents them.

Each is built from the plain dict its producer already makes (``msgspec.convert``), so a field
added there without being added here fails loudly in the tests instead of drifting silently.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class Shape(msgspec.Struct, forbid_unknown_fields=True):
    """A response shape: a key its producer adds without adding it here is an error, not lost."""


class Health(Shape):
    status: str


class Readiness(Shape, omit_defaults=True):
    """``status`` is ``loading``, ``ready`` or ``failed``; ``error`` says why it failed."""

    status: str
    error: str | None = None
    model: str | None = None
    adapter: str | None = None
    keystroke_copy: bool | None = None  # keystrokes run on the model's copy with a Q4_0 output layer
    load_seconds: float | None = None


class FailedFile(Shape):
    file: str
    reason: str


class IngestSummary(Shape):
    added: int
    changed: int
    unchanged: int
    removed: int
    failed: list[FailedFile]
    chunks_written: int
    chunks_deleted: int
    seconds: float


class IngestJob(Shape):
    """One ingest job; ``state`` is ``queued``, ``running``, ``done`` or ``failed``."""

    id: str
    folder: str
    collection: str
    state: str
    files_total: int
    files_done: int
    chunks_written: int
    progress: float
    summary: IngestSummary | None
    error: str | None
    created: float
    finished: float | None


class Percentiles(Shape):
    p50: float | None
    p95: float | None


class TierStats(Shape):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    first_token_ms: Percentiles
    total_ms: Percentiles


class LargeTier(Shape, omit_defaults=True):
    configured: bool
    model: str | None = None
    breaker: str | None = None


class DistillCounts(Shape):
    written: int
    dropped: int


class AdapterInfo(Shape):
    """The distilled LoRA adapter the small tier's answers use (``smallfirst distill``)."""

    name: str
    created: str | None
    train_examples: int
    bytes: int


class Admission(Shape):
    """The small answer model's measured service times and the wait they predict for a new answer."""

    service_s: float
    deviation_s: float
    first_token_s: float
    typing_service_s: float | None
    predicted_wait_s: float
    budget_s: float
    waiting: int
    shed: int  # admitted answers given up in the queue once their first token could no longer come within the budget


class Stats(Shape, omit_defaults=True):
    """Since start: per tier, escalations and fallbacks by reason, finishes, support checks; the
    grounding threshold of each collection (``grounding``) and the large tier's breaker."""

    tiers: dict[str, TierStats]
    total_cost_usd: float
    escalations: dict[str, int]
    fallbacks: dict[str, int]
    finishes: dict[str, int]
    support_checks: dict[str, int]
    refused_over_budget: int
    admission: Admission
    grounding: dict[str, Any]
    large_tier: LargeTier
    answer_kv_cache: dict[str, int] | None = None
    answer_passage_states: dict[str, int] | None = None
    distill: DistillCounts | None = None
    adapter: AdapterInfo | None = None


class ErrorBody(Shape, omit_defaults=True):
    """Every error answer: ``code`` (``bad_request``, ``unauthorized``, ``forbidden``, ``not_found``, ``too_large``,
    ``busy``, ``internal``, ...), a message, whether retrying may help, and for ``internal`` the logged request id."""

    code: str
    message: str
    retryable: bool
    request_id: str | None = None


def shaped(kind: type[T], value: Any) -> T:
    """``value`` (plain dicts and lists) as the Struct ``kind``; an unknown or missing field raises."""
    return msgspec.convert(value, kind)
