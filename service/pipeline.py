"""The request pipelines: grounded answers (small first, large when needed) and autocomplete."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from retrieval.context import Context, assemble_context
from retrieval.errors import SmallfirstError, UpstreamTimeout
from retrieval.settings import Settings
from service.autocomplete import Typist
from service.llm.base import GenerationStats
from service.llm.prompts import ANSWER_STOPS, NOT_COVERED, answer_prompt, large_prompt
from service.llm.remote import LargeUnavailable
from service.protocol import Ask, Complete, source_entry
from service.router import Route, choose_tier
from service.runtime import Runtime

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class TokenWriter:
    """Sends a request's text deltas as ``token`` frames; deltas that pile up while the client
    reads slowly are coalesced into one frame instead of queueing without bound."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._id = request_id
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.seq = 0
        self.text: list[str] = []
        self.first_sent_at: float | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push(self, text: str) -> None:
        self._pending.append(text)
        self.text.append(text)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                await self._send({"type": "token", "id": self._id, "seq": self.seq, "text": text})
                if self.first_sent_at is None:
                    self.first_sent_at = time.perf_counter()
                self.seq += 1
            if self._closing and not self._pending:
                return

    def discard(self) -> None:
        """Drop what is not sent yet and stop: the request was superseded."""
        self._pending.clear()
        self._closing = True
        self._wake.set()

    async def close(self) -> None:
        """Send what is pending, then stop."""
        self._closing = True
        self._wake.set()
        await asyncio.shield(self._task)


class Request:
    """One request's timings, per-tier usage and output, for its ``done`` frame."""

    def __init__(self, request_id: str, received: float, settings: Settings) -> None:
        self.id = request_id
        self.received = received
        self.settings = settings
        self.segments: list[tuple[str, GenerationStats]] = []
        self.timings: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self.writer: TokenWriter | None = None

    def segment(self, tier: str) -> GenerationStats:
        """Usage of the next stretch of output, produced by ``tier``."""
        stats = GenerationStats()
        self.segments.append((tier, stats))
        return stats

    @property
    def tier(self) -> str:
        return self.segments[-1][0] if self.segments else "small"

    @property
    def text(self) -> str:
        return "".join(self.writer.text) if self.writer else ""

    def cost_usd(self) -> float:
        s = self.settings
        prices = {"small": (s.small_price_in_per_m, s.small_price_out_per_m),
                  "large": (s.large_price_in_per_m, s.large_price_out_per_m)}
        total = 0.0
        for tier, stats in self.segments:
            price_in, price_out = prices[tier]
            total += (stats.prompt_tokens * price_in + stats.completion_tokens * price_out) / 1e6
        return round(total, 8)

    def done_frame(self, finish: str) -> dict[str, Any]:
        now = time.perf_counter()
        first = self.writer.first_sent_at if self.writer else None
        head = self.segments[0][1] if self.segments else GenerationStats()
        timings = {
            "queue": round(head.queue_ms, 1), **self.timings, "prefill": round(head.prefill_ms, 1),
            "first_token": _ms(first - self.received) if first else None, "total": _ms(now - self.received),
        }
        usage = {
            "prompt_tokens": sum(s.prompt_tokens for _, s in self.segments),
            "completion_tokens": sum(s.completion_tokens for _, s in self.segments),
            "cached_tokens": sum(s.cached_tokens for _, s in self.segments),
        }
        return {
            "type": "done", "id": self.id, "finish": finish, "tier": self.tier, "usage": usage,
            "cost_usd": self.cost_usd(), "timings_ms": timings, **self.extra,
        }

    async def pump(self, send: Send, stream: AsyncIterator[str]) -> None:
        """Stream deltas to the client through one writer shared by every segment."""
        if self.writer is None:
            self.writer = TokenWriter(send, self.id)
        async for text in stream:
            self.writer.push(text)

    async def finish(self) -> None:
        if self.writer is not None:
            await self.writer.close()


async def _fixed_text(text: str, stats: GenerationStats) -> AsyncIterator[str]:
    stats.finish = "stop"
    yield text


def _fallback_reason(error: BaseException) -> str:
    if isinstance(error, LargeUnavailable):
        return "large_unavailable"
    if isinstance(error, UpstreamTimeout):
        return "large_timeout"
    return "large_error"


async def answer(runtime: Runtime, msg: Ask, send: Send, req: Request) -> str:
    """Retrieve, route, send ``sources``, then stream the answer from the chosen tier, falling back
    to the small tier (and saying so) when the large one is unconfigured or fails."""
    runtime.require_ready()
    settings = runtime.settings
    assert runtime.answer_model is not None and runtime.tokenizer is not None and runtime.classifier is not None
    t = time.perf_counter()
    vector = await runtime.embed_query(msg.question)
    req.timings["embed"] = _ms(time.perf_counter() - t)
    t = time.perf_counter()
    hits = await runtime.search(vector, msg.top_k, msg.collection)
    req.timings["search"] = _ms(time.perf_counter() - t)
    context = assemble_context(hits, settings.context_tokens, runtime.tokenizer.count, settings.min_score)
    route = choose_tier(
        hits[0].score if hits else None, runtime.classifier.probability(vector), settings, msg.tier,
        small_saturated=runtime.answer_model.saturated,
    )
    await send({"type": "sources", "id": msg.id, "sources": [source_entry(h) for h in context.sources]})
    try:
        if route.tier == "large":
            finish = await _answer_large(runtime, msg, send, req, context, route)
        else:
            finish = await _answer_small(runtime, msg, send, req, context, route)
    finally:
        await req.finish()
    return finish


async def _answer_large(runtime: Runtime, msg: Ask, send: Send, req: Request, context: Context, route: Route) -> str:
    settings = runtime.settings
    if runtime.large is None:
        runtime.stats.fallbacks["large_unconfigured"] += 1
        await send({"type": "fallback", "id": msg.id, "from": "large", "to": "small", "reason": "large_unconfigured"})
        return await _answer_small(runtime, msg, send, req, context, route)
    if not route.forced:
        runtime.stats.escalations[route.reason or "forced"] += 1
        await send({"type": "escalated", "id": msg.id, "reason": route.reason, "tier": "large"})
    stats = req.segment("large")
    prompt = large_prompt(context.text if settings.large_send_context else "", msg.question)
    started = time.perf_counter()
    try:
        await req.pump(send, runtime.large.stream(prompt, max_tokens=settings.large_max_tokens, temperature=0.2, stats=stats))
    except SmallfirstError as exc:
        reason = _fallback_reason(exc)
        log.warning("large tier failed for %s (%s): %s", msg.id, reason, exc.message)
        runtime.stats.fallbacks[reason] += 1
        await send({"type": "fallback", "id": msg.id, "from": "large", "to": "small", "reason": reason})
        return await _answer_small(runtime, msg, send, req, context, route, continuing=req.text)
    if runtime.distill is not None:
        runtime.distill.record({
            "ts": time.time(), "id": msg.id, "question": msg.question, "reason": route.reason,
            "context_ids": [h.id for h in context.sources], "context": context.text if settings.large_send_context else "",
            "answer": req.text, "latency_ms": _ms(time.perf_counter() - started),
            "usage": {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens},
            "cost_usd": req.cost_usd(), "model": settings.large_model,
        })
    return stats.finish


async def _answer_small(
    runtime: Runtime, msg: Ask, send: Send, req: Request, context: Context, route: Route, continuing: str = "",
) -> str:
    """The small tier's answer. When the retrieval scores said the documents do not hold the answer
    (``no_context`` or ``low_grounding``), it says so plainly instead of inventing one."""
    assert runtime.answer_model is not None
    stats = req.segment("small")
    if route.reason in ("no_context", "low_grounding") and not route.forced:
        stream = _fixed_text(NOT_COVERED if not continuing else "", stats)
    else:
        prompt = answer_prompt(context.text, msg.question) + continuing
        stream = runtime.answer_model.stream(
            prompt, max_tokens=runtime.settings.answer_max_tokens, stop=ANSWER_STOPS,
            temperature=runtime.settings.answer_temperature, stats=stats,
        )
    await req.pump(send, stream)
    return stats.finish


async def complete(runtime: Runtime, msg: Complete, send: Send, req: Request, typist: Typist) -> str:
    """Stream a suggestion for the typed text. A superseded suggestion sends nothing more: text
    still queued for the socket is dropped, not delivered late."""
    runtime.require_ready()
    assert runtime.autocomplete is not None
    if msg.collection is not None:
        await runtime.collection(msg.collection)  # an unknown set is refused here too
    if not msg.text.strip():
        return "stop"
    stats = req.segment("small")
    try:
        await req.pump(send, runtime.autocomplete.suggest(typist, msg.text, msg.max_tokens, stats, msg.collection))
    except asyncio.CancelledError:
        if req.writer is not None:
            req.writer.discard()
        raise
    except Exception:
        await req.finish()  # what was streamed before the error still goes out
        raise
    await req.finish()
    req.timings["step"] = round(stats.step_ms, 1)
    if typist.used is not None:
        req.extra["grounding"] = typist.used.describe()
    return stats.finish
