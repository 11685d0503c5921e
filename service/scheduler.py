"""One CPU scheduler: heavy work runs one step at a time on one thread, most urgent first.

On a 2-core machine two llama.cpp computations at once run 4x slower each, so every model
step, prefill batch and embedding batch goes through here. Work is cut into small steps, so a
keystroke waits at most for the one step already running. The thread is also the single owner
of every llama.cpp context: no other thread touches one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from enum import IntEnum
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Priority(IntEnum):
    """Lower runs first."""

    CONTROL = 0
    KEYSTROKE = 1
    ANSWER = 2
    INGEST = 3


class SchedulerClosed(RuntimeError):
    """The scheduler was stopped."""


class CpuScheduler:
    """A priority queue drained by one worker thread.

    A request runs as a chain of steps, and the next step of a chain is submitted only once
    the event loop has seen the previous one finish. So that a waiting lower-priority step
    (an embedding batch of an ingest job, say) does not slip into that gap every time, the
    worker lingers for ``linger_s`` after a step when only less urgent work is queued.

    Keystrokes come first, but not forever: one typist's suggestions can keep both cores busy,
    and answers queued behind them would then wait without bound. A queued answer step is
    passed over by at most ``answer_every`` more urgent steps in a row; then it runs (a
    keystroke waits for one answer step, 15-35 ms). Ingestion stays strictly last.
    """

    def __init__(self, name: str = "smallfirst-cpu", linger_s: float = 0.004, answer_every: int = 2) -> None:
        self._heap: list[tuple[int, int, Any]] = []
        self._ready = threading.Condition()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._closed = False
        self._linger_s = linger_s
        self._answer_every = answer_every
        self._passed_over = 0  # more urgent steps run in a row while an answer step waited
        self.steps = 0
        self.busy_s = 0.0
        self.on_step: Callable[[int, float], None] | None = None  # told each step's priority and seconds

    def start(self) -> None:
        self._thread.start()

    def _put(self, priority: int, item: Any) -> None:
        with self._ready:
            heapq.heappush(self._heap, (priority, next(self._order), item))
            self._ready.notify()

    async def run(self, priority: Priority, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread; cancelling the caller drops a job not yet started."""
        if self._closed:
            raise SchedulerClosed("the scheduler is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(int(priority), (fn, args, future, loop))
        return await future

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the running step; every job still queued fails with :class:`SchedulerClosed`,
        so no caller waits forever for a step that will never run."""
        self._closed = True
        with self._ready:
            queued, self._heap = self._heap, []
        for _, _, item in queued:
            if item is not None:
                _, _, future, loop = item
                _hand_back(future, loop, None, SchedulerClosed("the scheduler stopped before this step ran"))
        self._put(-1, None)
        if self._thread.is_alive() and threading.get_ident() != self._thread.ident:
            self._thread.join(timeout)

    def _next(self, last_priority: int | None) -> Any:
        """The most urgent job (or an answer step passed over too often); after a step, wait
        briefly for its successor before less urgent work."""
        with self._ready:
            if last_priority is not None and not self._answer_due():
                deadline = time.perf_counter() + self._linger_s
                while not self._heap or self._heap[0][0] > last_priority:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
            while not self._heap:
                self._ready.wait()
            if self._answer_due():
                index = min((i for i, entry in enumerate(self._heap) if entry[0] == Priority.ANSWER),
                            key=lambda i: self._heap[i][1])
                job = self._heap.pop(index)
                heapq.heapify(self._heap)
            else:
                job = heapq.heappop(self._heap)
            if job[0] == Priority.ANSWER:
                self._passed_over = 0
            elif job[0] < Priority.ANSWER and any(entry[0] == Priority.ANSWER for entry in self._heap):
                self._passed_over += 1
            return job

    def _answer_due(self) -> bool:
        """Whether an answer step has waited through ``answer_every`` more urgent steps (lock held)."""
        return (self._passed_over >= self._answer_every and bool(self._heap) and self._heap[0][0] < Priority.ANSWER
                and self._heap[0][2] is not None and any(entry[0] == Priority.ANSWER for entry in self._heap))

    def _work(self) -> None:
        last: int | None = None
        while True:
            priority, _, item = self._next(last)
            if item is None:
                return
            fn, args, future, loop = item
            if future is not None and future.cancelled():
                continue
            last = priority
            started = time.perf_counter()
            try:
                value = fn(*args)
            except BaseException as exc:
                _hand_back(future, loop, None, exc)
            else:
                _hand_back(future, loop, value, None)
            finally:
                elapsed = time.perf_counter() - started
                self.steps += 1
                self.busy_s += elapsed
                if self.on_step is not None:
                    try:
                        self.on_step(priority, elapsed)
                    except Exception:  # an observer never stops the scheduler
                        log.exception("scheduler step observer failed")


def _hand_back(future: Any, loop: Any, value: Any, error: BaseException | None) -> None:
    """Resolve an awaited job's future on its loop; a loop already closed no longer cares."""
    if future is None:
        if error is not None:
            log.error("scheduler job failed", exc_info=error)
        return
    try:
        loop.call_soon_threadsafe(_settle, future, value, error)
    except RuntimeError:
        pass


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
