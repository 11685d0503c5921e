"""The request pipelines: grounded answers and autocomplete, streamed as protocol frames."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from retrieval.context import assemble_context
from retrieval.errors import BadRequest
from service.llm.base import GenerationStats
from service.llm.prompts import ANSWER_STOPS, COMPLETE_STOPS, answer_prompt, complete_prompt
from service.protocol import Ask, Complete, source_entry
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
        self.first_sent_at: float | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push(self, text: str) -> None:
        self._pending.append(text)
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

    async def close(self) -> None:
        """Send what is pending, then stop."""
        self._closing = True
        self._wake.set()
        await asyncio.shield(self._task)


class Request:
    """Timing and usage of one request, for its ``done`` frame."""

    def __init__(self, request_id: str, received: float) -> None:
        self.id = request_id
        self.received = received
        self.stats = GenerationStats()
        self.timings: dict[str, float] = {}
        self.writer: TokenWriter | None = None

    def done_frame(self, finish: str) -> dict[str, Any]:
        now = time.perf_counter()
        first = self.writer.first_sent_at if self.writer else None
        timings = {
            "queue": round(self.stats.queue_ms, 1), **self.timings,
            "prefill": round(self.stats.prefill_ms, 1),
            "first_token": _ms(first - self.received) if first else None,
            "total": _ms(now - self.received),
        }
        return {
            "type": "done", "id": self.id, "finish": finish, "tier": "small",
            "usage": {
                "prompt_tokens": self.stats.prompt_tokens, "completion_tokens": self.stats.completion_tokens,
                "cached_tokens": self.stats.cached_tokens,
            },
            "cost_usd": 0.0, "timings_ms": timings,
        }


async def _stream(req: Request, send: Send, runtime_stream: Any) -> str:
    """Pump a backend stream into a token writer; returns the finish reason."""
    req.writer = TokenWriter(send, req.id)
    try:
        async for text in runtime_stream:
            req.writer.push(text)
    except asyncio.CancelledError:
        await req.writer.close()
        raise
    await req.writer.close()
    return req.stats.finish


async def answer(runtime: Runtime, msg: Ask, send: Send, req: Request) -> str:
    """Retrieve, send ``sources``, then stream a grounded answer from the small model."""
    runtime.require_ready()
    settings = runtime.settings
    if msg.collection is not None and msg.collection != settings.collection:
        raise BadRequest(f"unknown collection {msg.collection!r}; this service serves {settings.collection!r}")
    assert runtime.answer_model is not None and runtime.tokenizer is not None
    if msg.tier == "large":
        await send({"type": "fallback", "id": msg.id, "from": "large", "to": "small", "reason": "large_unconfigured"})
    t = time.perf_counter()
    vector = await runtime.embed_query(msg.question)
    req.timings["embed"] = _ms(time.perf_counter() - t)
    t = time.perf_counter()
    hits = await runtime.search(vector, msg.top_k)
    req.timings["search"] = _ms(time.perf_counter() - t)
    context = assemble_context(hits, settings.context_tokens, runtime.tokenizer.count, settings.min_score)
    await send({"type": "sources", "id": msg.id, "sources": [source_entry(h) for h in context.sources]})
    stream = runtime.answer_model.stream(
        answer_prompt(context.text, msg.question), max_tokens=settings.answer_max_tokens,
        stop=ANSWER_STOPS, temperature=settings.answer_temperature, stats=req.stats,
    )
    return await _stream(req, send, stream)


async def complete(runtime: Runtime, msg: Complete, send: Send, req: Request) -> str:
    """Stream a continuation of the typed text from the autocomplete context."""
    runtime.require_ready()
    assert runtime.complete_model is not None
    prompt = complete_prompt(msg.text)
    if not prompt.strip():
        return "stop"
    stream = runtime.complete_model.stream(
        prompt, max_tokens=msg.max_tokens, stop=COMPLETE_STOPS, temperature=0.0, stats=req.stats,
    )
    return await _stream(req, send, stream)
