"""The two workloads: a user asking a question, and a typist whose keystrokes ask for suggestions."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any, Callable

import websockets

from smallfirst.service.tools.loadtest.samples import ProtocolChecker, Sample


@dataclass(frozen=True)
class TypingProfile:
    chars_per_s: float = 6.0
    jitter: float = 0.5  # each gap is uniform in [1 - jitter, 1 + jitter] times the mean
    debounce_s: float = 0.1
    max_tokens: int = 8
    keep_typed_into: bool = True  # as the widget: typing into a suggestion asks for nothing (off: every pause asks)


class Connection:
    """One WebSocket with a reader that routes frames to request queues and checks the protocol."""

    def __init__(self, ws: Any, checker: ProtocolChecker) -> None:
        self.ws = ws
        self.checker = checker
        self.queues: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self.closed_reason: str | None = None
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, url: str, token: str | None, checker: ProtocolChecker, timeout_s: float) -> "Connection":
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await asyncio.wait_for(websockets.connect(url, max_size=None, additional_headers=headers, open_timeout=timeout_s), timeout_s)
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if ready.get("type") != "ready":
            await ws.close()
            raise ConnectionError(f"first frame was {ready.get('type')!r}, not ready")
        return cls(ws, checker)

    def expect(self, request_id: str) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.queues[request_id] = queue
        self.checker.opened(request_id)
        return queue

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if not self.checker.check(frame):
                    continue
                queue = self.queues.get(frame.get("id"))
                if queue is not None:
                    queue.put_nowait(frame)
        except websockets.ConnectionClosed:
            self.closed_reason = "connection closed"
        except (ValueError, OSError) as exc:
            self.closed_reason = f"connection broken: {type(exc).__name__}"
        finally:
            self.closed_reason = self.closed_reason or "connection closed"
            for queue in self.queues.values():
                queue.put_nowait(None)

    async def close(self) -> None:
        self._reader.cancel()
        try:
            await self.ws.close()
        except Exception:  # already gone
            pass


async def follow(conn: Connection, queue: asyncio.Queue[dict[str, Any] | None], sample: Sample,
                 clock: Callable[[], float], deadline: float) -> None:
    """Record one request's frames into its sample until done, error, timeout or a dropped socket."""
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            sample.timeout = True
            return
        try:
            frame = await asyncio.wait_for(queue.get(), remaining)
        except asyncio.TimeoutError:
            sample.timeout = True
            return
        now = clock()
        if frame is None:
            sample.error = conn.closed_reason or "connection closed"
            return
        kind = frame["type"]
        if kind == "sources":
            sample.sources = now
        elif kind == "escalated":
            if frame.get("reason") == "unsupported_answer":
                sample.revised = True
            else:
                sample.escalation = frame.get("reason")
        elif kind == "token":
            if sample.first_token is None:
                sample.first_token = now
            sample.token_times.append(now)
            sample.tokens += 1
            if sample.workload == "type":
                sample.text += str(frame.get("text", ""))
        elif kind == "done":
            sample.done, sample.finish = now, frame.get("finish")
            sample.tier, sample.cost_usd = frame.get("tier"), float(frame.get("cost_usd") or 0.0)
            sample.supported = frame.get("supported")
            return
        elif kind == "error":
            sample.done, sample.error = now, str(frame.get("code"))
            return


async def ask_session(url: str, token: str | None, question: str, sample: Sample, clock: Callable[[], float],
                      timeout_s: float, checker: ProtocolChecker) -> list[Sample]:
    """One user: connect, ask, read the answer to the end."""
    deadline = sample.scheduled + timeout_s
    try:
        conn = await Connection.open(url, token, checker, timeout_s)
    except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed, ConnectionError) as exc:
        sample.error = f"connect: {type(exc).__name__}"
        return [sample]
    try:
        queue = conn.expect(sample.id)
        sample.sent = clock()
        await conn.send({"type": "ask", "id": sample.id, "question": question})
        await follow(conn, queue, sample, clock, deadline)
    except websockets.ConnectionClosed:
        sample.error = conn.closed_reason or "connection closed"
    finally:
        await conn.close()
    return [sample]


def keystroke_times(text: str, start: float, profile: TypingProfile, rng: random.Random) -> list[float]:
    """When each character is typed."""
    mean = 1.0 / profile.chars_per_s
    times, t = [], start
    for _ in text:
        t += mean * rng.uniform(1 - profile.jitter, 1 + profile.jitter)
        times.append(t)
    return times


def typed_into(sent: str, suggestion: str, typed: str) -> bool:
    """Whether the text now ``typed`` runs into the suggestion shown for ``sent``: the widget then
    keeps the rest of the suggestion and asks for nothing; any other keystroke drops it."""
    return len(typed) > len(sent) and typed.startswith(sent) and (sent + suggestion).startswith(typed)


async def type_session(url: str, token: str | None, text: str, start: float, prefix: str, clock: Callable[[], float],
                       timeout_s: float, checker: ProtocolChecker, profile: TypingProfile, rng: random.Random,
                       warmup_until: float) -> list[Sample]:
    """One typist, doing what the widget does: a suggestion is asked for after each pause of
    ``debounce_s``; a keystroke that types into the suggestion shown keeps its rest and asks for
    nothing (unless ``keep_typed_into`` is off: then the next pause asks again, superseding it),
    and any other keystroke cancels it at once, whether or not its text has come. A suggestion
    is delivered only if its first token arrives before the next keystroke."""
    typed = keystroke_times(text, start, profile, rng)
    samples: list[Sample] = []
    try:
        conn = await Connection.open(url, token, checker, timeout_s)
    except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed, ConnectionError) as exc:
        return [Sample("type", f"{prefix}-0", start, error=f"connect: {type(exc).__name__}", warmup=start < warmup_until)]
    followers: list[asyncio.Task[None]] = []
    try:
        shown: tuple[Sample, str] | None = None  # the latest request and the text it was sent for
        for i, at in enumerate(typed):
            now_typed = text[: i + 1]
            send_at = at + profile.debounce_s
            next_key = typed[i + 1] if i + 1 < len(typed) else float("inf")
            await asyncio.sleep(max(0.0, at - clock()))
            if conn.closed_reason:
                break
            if shown is not None:
                sample, sent = shown
                if typed_into(sent, sample.text, now_typed):
                    if profile.keep_typed_into and len(sent) + len(sample.text) > len(now_typed):
                        continue  # the rest of the suggestion still stands: nothing to ask
                else:  # the text left the suggestion: drop it
                    if sample.done is None:
                        await conn.send({"type": "cancel", "id": sample.id})
                    shown = None
            if next_key <= send_at or not now_typed.strip():
                continue  # the user typed again before the debounce expired
            await asyncio.sleep(max(0.0, send_at - clock()))
            if conn.closed_reason:
                break
            sample = Sample("type", f"{prefix}-{i}", send_at, warmup=send_at < warmup_until)
            samples.append(sample)
            queue = conn.expect(sample.id)
            sample.sent = clock()
            await conn.send({"type": "complete", "id": sample.id, "text": now_typed, "max_tokens": profile.max_tokens})
            followers.append(asyncio.ensure_future(_follow_typed(conn, queue, sample, clock, send_at + timeout_s, next_key)))
            shown = (sample, now_typed)
        if followers:
            await asyncio.gather(*followers)
    except websockets.ConnectionClosed:
        for s in samples:
            if s.done is None and s.error is None:
                s.error = conn.closed_reason or "connection closed"
    finally:
        for task in followers:
            task.cancel()
        await conn.close()
    return samples


async def _follow_typed(conn: Connection, queue: asyncio.Queue[dict[str, Any] | None], sample: Sample,
                        clock: Callable[[], float], deadline: float, next_key: float) -> None:
    await follow(conn, queue, sample, clock, deadline)
    if sample.first_token is not None and sample.first_token <= next_key:
        sample.delivered = True
    else:  # superseded, or too late to be shown: the user has changed the text by then
        sample.stale = sample.error is None and not sample.timeout and (
            sample.first_token is not None or sample.finish == "cancelled")
