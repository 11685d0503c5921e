"""Admission by predicted wait: measured service times of a model, times the queue ahead.

An answer is admitted only when the wait it would see before its first token fits a budget;
otherwise it is refused at once (or sent to another tier) instead of joining a queue that
would make it, and everyone behind it, wait for many seconds.

The time one request holds the model is estimated as TCP estimates a retransmission timeout:
a moving average plus a multiple of the moving mean deviation, so that answers of uneven length
are not under-counted. It is measured in wall time, so it grows by itself when keystrokes (which
come first) take the CPU; and a request that has already held the model longer than that
estimate raises it at once, before it finishes: the queue stops growing as soon as the model
slows down, not several answers later.
"""

from __future__ import annotations

from dataclasses import dataclass

# Before anything is measured: a 450-token prompt and ~40 tokens on the reference 2-core machine.
PRIOR_SERVICE_S = 1.5
PRIOR_FIRST_TOKEN_S = 0.5
SMOOTHING = 0.25  # weight of each new measurement in the moving averages
DEVIATIONS = 2.0  # mean deviations added to the average service time
TYPING_SLOWDOWN = 3.0  # while someone types, answers get at least one scheduler step in three


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

    def per_request_s(self, holder_elapsed_s: float | None = None) -> float:
        """The time to count for each request ahead: the conservative estimate, or what the
        running request has already taken when that is longer."""
        return max(self.service_s + DEVIATIONS * self.deviation_s, holder_elapsed_s or 0.0)

    def predicted_first_token_s(self, waiting: int, holder_elapsed_s: float | None, slowdown: float = 1.0) -> float:
        """Seconds until a request arriving now would see its first token: what is left of the
        request holding the model, every request queued ahead, then its own prefill; each
        estimate ``slowdown`` times longer (a load not measured yet)."""
        per = max(slowdown * self.per_request_s(), holder_elapsed_s or 0.0)
        remaining = 0.0 if holder_elapsed_s is None else max(0.0, per - holder_elapsed_s)
        return remaining + waiting * per + slowdown * self.first_token_s


class LoadTimes:
    """Service times measured apart for answers that ran while someone typed (keystrokes come
    first, so those take several times longer) and for the others; a prediction uses the ones
    of the load at hand."""

    def __init__(self) -> None:
        self.idle = ServiceTimes()
        self.typing = ServiceTimes()

    def observe(self, service_s: float, first_token_s: float | None, typed: bool) -> None:
        (self.typing if typed else self.idle).observe(service_s, first_token_s)

    def predicted_first_token_s(self, waiting: int, holder_elapsed_s: float | None, typing: bool) -> float:
        if not typing:
            return self.idle.predicted_first_token_s(waiting, holder_elapsed_s)
        if self.typing.measured:
            return self.typing.predicted_first_token_s(waiting, holder_elapsed_s)
        return self.idle.predicted_first_token_s(waiting, holder_elapsed_s, TYPING_SLOWDOWN)

    def per_request_s(self, typing: bool) -> float:
        if typing and not self.typing.measured:
            return TYPING_SLOWDOWN * self.idle.per_request_s()
        return (self.typing if typing else self.idle).per_request_s()
