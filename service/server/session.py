"""One WebSocket connection: read frames, run requests as tasks, write frames, clean up."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from smallfirst.errors import BadRequest, Busy, RateLimited, SmallfirstError
from smallfirst.settings import Settings
from smallfirst.service.server import logs
from smallfirst.service.answer import pipeline
from smallfirst.service.autocomplete.request import complete
from smallfirst.service.autocomplete.typist import Typist
from smallfirst.service.protocol import (
    Ask, Cancel, Complete, FrameError, Ping, encode, error_frame, parse_frame, ready_frame,
)
from smallfirst.service.server.metrics import Metrics
from smallfirst.service.server.observe import RequestWatch
from smallfirst.service.core.components import Components
from smallfirst.service.request import Request
from smallfirst.service.server.runtime import Runtime

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
ABUSE_REJECTIONS = 200


class TokenBucket:
    """Per-connection rate limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Session:
    """Serves the protocol on one accepted socket until it closes."""

    def __init__(self, socket: WebSocket[Any, Any, Any], runtime: Runtime, settings: Settings, subprotocol: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self.socket = socket
        self.subprotocol = subprotocol
        self.runtime = runtime
        self.settings = settings
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.complete_id: str | None = None
        self.closed = False
        self._send_lock = asyncio.Lock()
        self._bucket = TokenBucket(settings.rate_limit_per_s, settings.rate_burst)
        self._rejections = 0
        self._typist: Typist | None = None
        self.watch = RequestWatch(metrics)

    def _typist_of(self, components: Components) -> Typist:
        """This connection's autocomplete state, created on its first keystroke."""
        if self._typist is None:
            self._typist = components.autocomplete.typist()
        return self._typist

    async def send(self, frame: dict[str, Any]) -> None:
        """Write one frame; a socket that went away just stops receiving. Never raises: a frame that
        cannot be encoded is logged and replaced by an ``internal`` error for its id."""
        self.watch.sent(frame)
        if self.closed:
            return
        try:
            text = encode(frame)
        except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
            log.error("cannot encode a %r frame: %s", frame.get("type"), exc)
            request_id = frame.get("id")
            text = encode(error_frame(SmallfirstError("internal error; see the server log"),
                                      request_id if isinstance(request_id, str) else None))
        async with self._send_lock:
            if self.closed:
                return
            try:
                await self.socket.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.closed = True

    async def run(self) -> None:
        logs.connection_id.set(self.watch.connection_id)  # inherited by every request task of this connection
        await self.socket.accept(subprotocols=self.subprotocol)
        components = self.runtime.components
        adapter = components.adapter if components is not None else None
        await self.send(ready_frame(self.settings, self.runtime.model_name or "loading",
                                    adapter.name if adapter is not None else None))
        try:
            while not self.closed:
                try:
                    message = await asyncio.wait_for(self.socket.receive(), self.settings.idle_timeout_s)
                except asyncio.TimeoutError:
                    await self._close(1000, "idle timeout")
                    return
                if message["type"] == "websocket.disconnect":
                    break
                if message["type"] != "websocket.receive":
                    continue
                if not await self._handle(message.get("text") if message.get("text") is not None else message.get("bytes")):
                    return
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            await self._cancel_all()
            self.watch.close()
            components = self.runtime.components
            if self._typist is not None and components is not None:
                components.autocomplete.release(self._typist)

    async def _close(self, code: int, reason: str) -> None:
        self.closed = True
        try:
            await self.socket.close(code=code, reason=reason)
        except Exception:  # already gone
            pass

    async def _handle(self, raw: str | bytes | None) -> bool:
        """Handle one frame; False once the connection is closed for abuse."""
        if not self._bucket.take():
            self._rejections += 1
            if self._rejections >= ABUSE_REJECTIONS:
                await self._close(POLICY_VIOLATION, "rate limit exceeded repeatedly")
                return False
            await self.send(error_frame(RateLimited("too many messages; slow down"), None))
            return True
        self._rejections = 0
        received = time.perf_counter()
        try:
            msg = parse_frame(raw, self.settings)
        except FrameError as exc:
            await self.send(error_frame(exc, exc.request_id))
            return True
        if isinstance(msg, Ping):
            await self.send({"type": "pong", "ts": msg.ts})
        elif isinstance(msg, Cancel):
            task = self.tasks.get(msg.id)
            if task is not None:
                task.cancel()
        elif isinstance(msg, Complete):
            if self.complete_id is not None:  # a new keystroke supersedes the previous suggestion
                previous = self.tasks.pop(self.complete_id, None)
                if previous is not None:
                    previous.cancel()
                self.complete_id = None
            await self._start(msg.id, msg, received, is_complete=True)
        elif isinstance(msg, Ask):
            await self._start(msg.id, msg, received, is_complete=False)
        return True

    async def _start(self, request_id: str, msg: Ask | Complete, received: float, is_complete: bool) -> None:
        error: SmallfirstError | None = None
        if request_id in self.tasks:
            error = BadRequest(f"a request with id {request_id!r} is already in flight")
        elif not is_complete and sum(1 for i in self.tasks if i != self.complete_id) >= self.settings.max_inflight:
            error = Busy(f"this connection already has {self.settings.max_inflight} requests in flight")
        if error is not None:
            await self.send(error_frame(error, request_id))
            return
        if is_complete:
            self.complete_id = request_id
        self.watch.start(request_id, "complete" if is_complete else "ask", received)
        self.tasks[request_id] = asyncio.get_running_loop().create_task(self._serve(msg, received))

    async def _serve(self, msg: Ask | Complete, received: float) -> None:
        req = Request(msg.id, received, self.settings)
        logs.request_id.set(msg.id)
        try:
            components = self.runtime.require()  # a socket may open while loading and ask once ready
            if isinstance(msg, Ask):
                finish = await pipeline.answer(components, msg, self.send, req)
            else:
                finish = await complete(components.autocomplete, components.retriever.collection, msg, self.send, req,
                                        self._typist_of(components))
            await self._done(req, finish, is_answer=isinstance(msg, Ask))
        except asyncio.CancelledError:
            await self._done(req, "cancelled", is_answer=isinstance(msg, Ask))
        except SmallfirstError as exc:
            await self.send(error_frame(exc, msg.id))
            self.watch.fail(msg.id, exc.code)
        except Exception:
            log.exception("request %s failed", msg.id)
            await self.send(error_frame(SmallfirstError("internal error; see the server log"), msg.id))
            self.watch.fail(msg.id, "internal")
        finally:
            if self.tasks.get(msg.id) is asyncio.current_task():
                del self.tasks[msg.id]
                if self.complete_id == msg.id:
                    self.complete_id = None

    async def _done(self, req: Request, finish: str, is_answer: bool) -> None:
        done = req.done_frame(finish)
        if is_answer:
            self.runtime.stats.record(done)
        await self.send(done)
        self.watch.finish(done)

    async def _cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
