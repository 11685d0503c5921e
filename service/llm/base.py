"""The model backend interface: stream text for a prompt, stoppable between steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol, Sequence


@dataclass
class GenerationStats:
    """Filled in by a backend while it streams."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish: str = "stop"
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    step_ms: float = 0.0  # the model step behind the first text shown (0: none ran), where a backend measures it


class Backend(Protocol):
    """A model that streams text; the local llama.cpp model, a remote API and test doubles alike."""

    name: str

    def stream(
        self,
        prompt: str,
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        stats: GenerationStats | None = None,
    ) -> AsyncIterator[str]:
        """Yield text deltas; stop at a stop string (not yielded) or ``max_tokens``. Cancelling the
        task that iterates stops the generation before its next step."""
        ...


class StopMatcher:
    """Holds back text that might be the start of a stop string; cuts at the first stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now."""
        if self.stopped:
            return ""
        self._buffer += text
        cut = min((i for i in (self._buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._buffer, self.stopped = self._buffer[:cut], "", True
            return out
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._buffer)), 0, -1):
                if self._buffer.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self._buffer[: len(self._buffer) - hold]
        self._buffer = self._buffer[len(out):]
        return out

    def flush(self) -> str:
        """Whatever was held back, once generation ended without a stop string."""
        out, self._buffer = ("" if self.stopped else self._buffer), ""
        return out
