"""A circuit breaker: stop calling an endpoint that keeps failing, try again after a pause."""

from __future__ import annotations

import time
from typing import Callable


class CircuitBreaker:
    """Closed: calls go through. Open after ``failures`` consecutive failures: calls are refused
    for ``reset_s`` seconds. Then half-open: one trial call; its success closes the breaker,
    its failure opens it again."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._reset_s else "open"

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open state, only one at a time)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def abandon(self) -> None:
        """A call ended without a verdict (cancelled by its client): free the half-open trial slot."""
        self._trial_running = False

    def failure(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._trial_running = False
