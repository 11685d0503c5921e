"""Which typist owns which autocomplete slot: claims, least-recently-used eviction, release.

Event-loop state only: it never touches the model. A slot keeps its KV cache when its owner
goes, so a later prompt with the same start can still copy that prefix.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Collection

if TYPE_CHECKING:
    from smallfirst.service.autocomplete.typist import Typist


class SlotOwners:
    """The owner and last use of each of ``n_slots`` slots."""

    def __init__(self, n_slots: int) -> None:
        self.n_slots = n_slots
        self._owner: list[Typist | None] = [None] * n_slots
        self._used: list[float] = [0.0] * n_slots

    def owner(self, slot: int) -> Typist | None:
        return self._owner[slot]

    def owns(self, typist: Typist, slot: int | None) -> bool:
        return slot is not None and self._owner[slot] is typist

    @property
    def in_use(self) -> int:
        """Slots a typist owns."""
        return sum(1 for owner in self._owner if owner is not None)

    def touch(self, slot: int) -> None:
        self._used[slot] = time.perf_counter()

    def free(self, slot: int, typist: Typist | None = None) -> None:
        """Give ``slot`` up (only if ``typist`` owns it, when given)."""
        if typist is None or self._owner[slot] is typist:
            self._owner[slot] = None

    def release(self, typist: Typist) -> None:
        """A connection closed: every slot it owns becomes free."""
        for slot, owner in enumerate(self._owner):
            if owner is typist:
                self._owner[slot] = None

    def claim(self, typist: Typist, busy: Collection[int]) -> int | None:
        """A slot for ``typist`` outside ``busy``: a free one, else the least recently used one
        another typist owns (who then starts cold on its next keystroke)."""
        candidates = [s for s in range(self.n_slots) if s not in busy and self._owner[s] is None]
        if not candidates:
            candidates = [s for s in range(self.n_slots) if s not in busy and self._owner[s] is not typist]
        if not candidates:
            return None
        return self.take(typist, min(candidates, key=lambda s: self._used[s]))

    def take(self, typist: Typist, slot: int) -> int:
        """Give ``slot`` to ``typist``; its previous owner starts cold on its next keystroke."""
        previous = self._owner[slot]
        if previous is not None and previous is not typist:
            previous.evicted_from(slot)
        self._owner[slot] = typist
        self._used[slot] = time.perf_counter()
        return slot
