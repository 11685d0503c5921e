"""Admission by predicted wait, and the queue in front of one model.

An answer is admitted only when the wait it would see behind other requests fits a budget;
otherwise it is refused at once (or sent to another tier) instead of joining a queue that
would make it, and everyone behind it, wait for many seconds. The budget bounds the wait behind
others, never the answer's own prefill: with nothing running and nothing queued, an answer is
always admitted, however slow the last one was.

The time one request holds the model is estimated as TCP estimates a retransmission timeout:
a moving average plus a multiple of the moving mean deviation, so that answers of uneven length
are not under-counted. It is measured in wall time, so it grows by itself when keystrokes (which
come first) take the CPU; and a request that has already held the model longer than that
estimate raises it at once, before it finishes: the queue stops growing as soon as the model
slows down, not several answers later. While the model sits idle, what was measured fades back
toward the prior (a slow spell says little about the next answer once it is over), so no
estimate can stay high without new measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from smallfirst.errors import Busy
from smallfirst.service.llm.base import GenerationStats

# Before anything is measured: a 450-token prompt and ~40 tokens on the reference 2-core machine.
PRIOR_SERVICE_S = 1.5
PRIOR_FIRST_TOKEN_S = 0.5
SMOOTHING = 0.25  # weight of each new measurement in the moving averages
DEVIATIONS = 2.0  # mean deviations added to the average service time
TYPING_SLOWDOWN = 3.0  # while someone types, answers get at least one scheduler step in three
RELAX_S = 5.0  # idle seconds over which what was measured fades by a factor e toward the prior
SHED_CHECK_S = 0.1  # how often a queued answer re-checks that its turn still comes within its budget


@dataclass
class ServiceTimes:
    """Moving averages of how long one request holds the model (and its deviation), and how long
    until its first token."""

    service_s: float = PRIOR_SERVICE_S
    deviation_s: float = PRIOR_SERVICE_S / 2
    first_token_s: float = PRIOR_FIRST_TOKEN_S
    measured: int = 0

    def observe(self, service_s: float, first_token_s: float | None) -> None:
        """Record one finished request (``first_token_s`` None: it produced no token)."""
        service_s = max(0.0, service_s)
        if self.measured == 0:
            self.service_s, self.deviation_s = service_s, service_s / 2
        else:
            self.deviation_s += SMOOTHING * (abs(service_s - self.service_s) - self.deviation_s)
            self.service_s += SMOOTHING * (service_s - self.service_s)
        if first_token_s is not None:
            weight = 1.0 if self.measured == 0 else SMOOTHING
            self.first_token_s += weight * (max(0.0, first_token_s) - self.first_token_s)
        self.measured += 1

    def rest(self, idle_s: float) -> None:
        """The model sat idle for ``idle_s``: every estimate moves toward its prior, by a factor
        e each ``RELAX_S``. A spell of slow answers (the CPU shared with other work, a cold
        cache) thus stops counting within seconds of its end."""
        if idle_s <= 0:
            return
        keep = math.exp(-idle_s / RELAX_S)
        self.service_s = PRIOR_SERVICE_S + keep * (self.service_s - PRIOR_SERVICE_S)
        self.deviation_s = PRIOR_SERVICE_S / 2 + keep * (self.deviation_s - PRIOR_SERVICE_S / 2)
        self.first_token_s = PRIOR_FIRST_TOKEN_S + keep * (self.first_token_s - PRIOR_FIRST_TOKEN_S)

    def per_request_s(self, holder_elapsed_s: float | None = None) -> float:
        """The time to count for each request ahead: the conservative estimate, or what the
        running request has already taken when that is longer."""
        return max(self.service_s + DEVIATIONS * self.deviation_s, holder_elapsed_s or 0.0)

    def predicted_wait_s(self, waiting: int, holder_elapsed_s: float | None, slowdown: float = 1.0) -> float:
        """Seconds until a request arriving now would take the model: what is left of the request
        holding it, then every request queued ahead; each estimate ``slowdown`` times longer (a
        load not measured yet). Zero when the model is free and nothing waits."""
        per = max(slowdown * self.per_request_s(), holder_elapsed_s or 0.0)
        remaining = 0.0 if holder_elapsed_s is None else max(0.0, per - holder_elapsed_s)
        return remaining + waiting * per


class LoadTimes:
    """Service times measured apart for answers that ran while someone typed (keystrokes come
    first, so those take several times longer) and for the others; a prediction uses the ones
    of the load at hand."""

    def __init__(self) -> None:
        self.idle = ServiceTimes()
        self.typing = ServiceTimes()

    def observe(self, service_s: float, first_token_s: float | None, typed: bool) -> None:
        (self.typing if typed else self.idle).observe(service_s, first_token_s)

    def rest(self, idle_s: float) -> None:
        self.idle.rest(idle_s)
        self.typing.rest(idle_s)

    def predicted_wait_s(self, waiting: int, holder_elapsed_s: float | None, typing: bool) -> float:
        if not typing:
            return self.idle.predicted_wait_s(waiting, holder_elapsed_s)
        if self.typing.measured:
            return self.typing.predicted_wait_s(waiting, holder_elapsed_s)
        return self.idle.predicted_wait_s(waiting, holder_elapsed_s, TYPING_SLOWDOWN)

    def per_request_s(self, typing: bool) -> float:
        if typing and not self.typing.measured:
            return TYPING_SLOWDOWN * self.idle.per_request_s()
        return (self.typing if typing else self.idle).per_request_s()


class Reservation:
    """A place in a model's queue, held from admission until the request streams (or gives up),
    and the time by which its turn was promised (admission time plus the budget)."""

    def __init__(self, queue: "ModelQueue", deadline: float) -> None:
        self._queue = queue
        self.held = True
        self.deadline = deadline
        queue.reserved += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self._queue.reserved -= 1


@dataclass
class Turn:
    """One request's hold on the model: since when, whether someone typed meanwhile, and when its
    first token came (None: it made none), for the admission's service times."""

    held_from: float
    typed: bool = False
    first_token_s: float | None = None


class ModelQueue:
    """The line in front of one model: admission against a wait budget, requests taking the
    model one at a time in arrival order, an admitted request given up while it waits once its
    promise can no longer be kept, and the service times each turn measures.

    Lives on the event loop; ``clock`` (seconds) and ``typing`` (whether someone types now, so
    answers run slower) are injected."""

    def __init__(self, name: str, limit: int, typing: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.name = name
        self.limit = limit
        self.typing = typing
        self._clock = clock
        self.times = LoadTimes()
        self.reserved = 0  # admitted requests still retrieving: they will queue here
        self.shed = 0  # admitted requests given up while queued: their turn would have come too late
        self._lock = asyncio.Lock()
        self._tickets: list[object] = []  # a ticket per request waiting for the lock, in arrival order
        self._holder_since: float | None = None
        self._idle_from: float | None = None  # when the model last went idle (None: never used yet)

    @property
    def waiting(self) -> int:
        """Requests waiting for this model, admitted ones still retrieving included."""
        return len(self._tickets) + self.reserved

    def _held_for(self) -> float | None:
        since = self._holder_since
        return None if since is None else self._clock() - since

    def _settle(self) -> None:
        """Let the estimates rest for the time the model has sat idle since last settled."""
        if self._holder_since is None and self._idle_from is not None:
            now = self._clock()
            self.times.rest(now - self._idle_from)
            self._idle_from = now

    def predicted_wait_s(self) -> float:
        """Seconds until a request admitted now would take the model, from measured service times."""
        self._settle()
        return self.times.predicted_wait_s(self.waiting, self._held_for(), typing=self.typing())

    def admit(self, budget_s: float) -> Reservation:
        """A place in the queue when the predicted wait behind others fits ``budget_s`` (always, when
        the model is free and nothing waits), else ``Busy`` at once with the time after which a
        retry would likely fit."""
        if self.waiting >= self.limit:
            raise self.full()
        predicted = self.predicted_wait_s()
        if predicted > budget_s:
            raise Busy(f"the {self.name} model is busy: an answer would wait about {predicted:.1f} s "
                       f"(budget {budget_s:g} s); try again shortly",
                       retry_after_ms=max(100, int((predicted - budget_s) * 1000)))
        return Reservation(self, self._clock() + budget_s)

    def full(self) -> Busy:
        return Busy(f"the {self.name} model has {self.waiting} requests waiting; try again shortly",
                    retry_after_ms=max(100, int(self.times.per_request_s(self.typing()) * 1000)))

    async def _acquire(self, ticket: object, deadline: float | None) -> None:
        """Take the model in turn. An admitted request (``deadline`` set) is given up with ``Busy``
        while it waits, as soon as the wait predicted from its place in the queue would bring its
        turn after the deadline: a long answer or a typing burst ahead of it broke the promise,
        and saying so at once beats a first token long after the budget."""
        if deadline is None:
            await self._lock.acquire()
            return
        acquiring = asyncio.ensure_future(self._lock.acquire())
        try:
            while not acquiring.done():
                await asyncio.wait((acquiring,), timeout=SHED_CHECK_S)
                if acquiring.done():
                    break
                ahead = self._tickets.index(ticket)
                predicted = self.times.predicted_wait_s(ahead, self._held_for(), typing=self.typing())
                late = self._clock() + predicted - deadline
                if late > 0:
                    self.shed += 1
                    raise Busy(f"the {self.name} model fell behind: this answer would start about "
                               f"{late:.1f} s after its budget; try again shortly",
                               retry_after_ms=max(100, int(predicted * 1000)))
        except BaseException:
            if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
                self._lock.release()
            else:
                acquiring.cancel()
            raise
        await acquiring

    @contextlib.asynccontextmanager
    async def turn(self, stats: GenerationStats, reservation: Reservation | None) -> AsyncIterator[Turn]:
        """Hold the model for one request: wait in line (see :meth:`_acquire`), then measure how long
        it held the model for the admission's estimates, and let the next one in. Without a
        reservation (no promise made), the queue limit alone applies."""
        admitted = reservation is not None and reservation.held
        if reservation is not None:
            reservation.release()
        if not admitted and self.waiting >= self.limit:
            raise self.full()
        queued = self._clock()
        ticket = object()
        self._tickets.append(ticket)
        try:
            await self._acquire(ticket, reservation.deadline if admitted and reservation is not None else None)
        finally:
            self._tickets.remove(ticket)
        self._settle()
        turn = Turn(held_from=self._clock())
        self._holder_since = turn.held_from
        stats.queue_ms = (turn.held_from - queued) * 1000
        try:
            yield turn
        except (asyncio.CancelledError, GeneratorExit):
            stats.finish = "cancelled"
            raise
        finally:
            now = self._clock()
            self._holder_since = None
            self._idle_from = now
            if stats.finish != "cancelled":  # a cancelled request says nothing of a whole one's length
                self.times.observe(now - turn.held_from, turn.first_token_s, turn.typed)
            self._lock.release()
