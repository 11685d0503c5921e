"""Connection caps for the WebSocket: one for the whole service and one per client address."""

from __future__ import annotations

from collections import Counter

TRY_AGAIN_LATER = 1013


class ConnectionLimiter:
    """Counts open WebSocket connections, in total and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._open: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return sum(self._open.values())

    def acquire(self, client: str) -> str | None:
        """Count one more connection for ``client``; None (nothing counted) says why it is refused."""
        if self.open >= self.total:
            return f"the service holds its maximum of {self.total} connections"
        if self._open[client] >= self.per_client:
            return f"this address holds its maximum of {self.per_client} connections"
        self._open[client] += 1
        return None

    def release(self, client: str) -> None:
        self._open[client] -= 1
        if self._open[client] <= 0:
            del self._open[client]
