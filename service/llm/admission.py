"""Admission by predicted wait: measured service times of a model, times the queue ahead.

An answer is admitted only when the wait it would see before its first token fits a budget;
otherwise it is refused at once (or sent to another tier) instead of joining a queue that
would make it, and everyone behind it, wait for many seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

# Before anything is measured: a 450-token prompt and ~40 tokens on the reference 2-core machine.
PRIOR_SERVICE_S = 1.5
PRIOR_FIRST_TOKEN_S = 0.5
SMOOTHING = 0.2  # weight of each new measurement in the moving averages


@dataclass
class ServiceTimes:
    """Moving averages of how long one request holds the model, and how long until its first token."""

    service_s: float = PRIOR_SERVICE_S
    first_token_s: float = PRIOR_FIRST_TOKEN_S
    measured: int = 0

    def observe(self, service_s: float, first_token_s: float | None) -> None:
        """Record one finished request (``first_token_s`` None: it produced no token)."""
        weight = 1.0 if self.measured == 0 else SMOOTHING
        self.service_s += weight * (max(0.0, service_s) - self.service_s)
        if first_token_s is not None:
            self.first_token_s += weight * (max(0.0, first_token_s) - self.first_token_s)
        self.measured += 1

    def predicted_first_token_s(self, waiting: int, holder_elapsed_s: float | None) -> float:
        """Seconds until a request arriving now would see its first token: what is left of the
        request holding the model, every request queued ahead, then its own prefill."""
        remaining = 0.0 if holder_elapsed_s is None else max(0.0, self.service_s - holder_elapsed_s)
        return remaining + waiting * self.service_s + self.first_token_s
