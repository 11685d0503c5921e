"""One request on the WebSocket: its text deltas sent as ``token`` frames, and its timings, per-tier
usage and cost accounted for its ``done`` frame. Answers and suggestions alike go through it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from smallfirst.service.llm.admission import Reservation
from smallfirst.service.llm.base import GenerationStats
from smallfirst.settings import Settings

Send = Callable[[dict[str, Any]], Awaitable[None]]


def ms(seconds: float) -> float:
    """Seconds as milliseconds, to a tenth."""
    return round(seconds * 1000, 1)


class TokenWriter:
    """Sends a request's text deltas as ``token`` frames; deltas that pile up while the client
    reads slowly are coalesced into one frame instead of queueing without bound."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._id = request_id
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self.seq = 0
        self.text: list[str] = []
        self.first_sent_at: float | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push(self, text: str) -> None:
        self._pending.append(text)
        self.text.append(text)
        self._drained.clear()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until every pushed delta is on the socket, so a frame sent next comes after them."""
        await self._drained.wait()

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
            if not self._pending:
                self._drained.set()
            if self._closing and not self._pending:
                return

    def discard(self) -> None:
        """Drop what is not sent yet and stop: the request was superseded."""
        self._pending.clear()
        self._drained.set()
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
        self.finish_reason = "stop"  # of the segment that ended the answer
        self.reservation: Reservation | None = None  # its place in the small model's queue, once admitted
        self._text_start = 0

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
        """The answer as the client now shows it (from the last replacement on)."""
        return "".join(self.writer.text)[self._text_start:] if self.writer else ""

    def restart_text(self) -> None:
        """What was streamed so far is replaced by what follows (the client was told)."""
        self._text_start += len(self.text)

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
            "first_token": ms(first - self.received) if first else None, "total": ms(now - self.received),
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

    async def drain(self) -> None:
        """Wait until every token so far is sent: a control frame sent next comes after them."""
        if self.writer is not None:
            await self.writer.drain()

    async def finish(self) -> None:
        if self.writer is not None:
            await self.writer.close()
