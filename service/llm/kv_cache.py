"""Saved KV states of prompt prefixes, so that a prompt starting with a prefix seen before
evaluates only what follows it.

The answer model saves the state of each whole answer prompt (all but its last token, as
llama.cpp's per-sequence state, ~18 KB a token for Gemma 3 270M) under the exact tokens it
covers. The same question on the same sources, asked again after other questions have replaced
the context's KV, restores it and prefills nothing. The restored state is bit for bit the one
the first prefill computed, so the answer is the same.

States are saved only where a prefill step ends anyway. Saving inside a prompt (after the
frame, or after the first source block, to share it with other questions) would end a step
there, and llama.cpp's results depend slightly on how a prompt is cut into batches: on the
pydoc QA set that changed 25 of 96 greedy answers and cost 2 right ones, against 6 changed and
none lost for 16- instead of 32-token steps. A changed chunk changes its tokens, so a stale state
is never matched; it ages out of the LRU, which is bounded in bytes.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Sequence


class PrefixCache:
    """Blobs keyed by token prefixes; the longest stored prefix of a prompt is found by trying
    each stored length (few distinct lengths, each one a dict look-up)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._lengths: Counter[int] = Counter()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, tokens: Sequence[int], longer_than: int, at_most: int) -> tuple[int, bytes] | None:
        """The longest stored prefix of ``tokens`` with a length in (``longer_than``, ``at_most``]."""
        for length in sorted(self._lengths, reverse=True):
            if length > at_most or length > len(tokens):
                continue
            if length <= longer_than:
                break
            key = tuple(tokens[:length])
            blob = self._entries.get(key)
            if blob is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return length, blob
        self.misses += 1
        return None

    def holds(self, prefix: Sequence[int]) -> bool:
        return tuple(prefix) in self._entries

    def put(self, prefix: Sequence[int], blob: bytes) -> None:
        """Store ``blob`` for ``prefix``, evicting the least recently used beyond the budget."""
        key = tuple(prefix)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        if not key or len(blob) > self.budget_bytes:
            return
        self._entries[key] = blob
        self._lengths[len(key)] += 1
        self.bytes += len(blob)
        while self.bytes > self.budget_bytes:
            old, old_blob = self._entries.popitem(last=False)
            self.bytes -= len(old_blob)
            self._lengths[len(old)] -= 1
            if not self._lengths[len(old)]:
                del self._lengths[len(old)]

    def as_dict(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self.bytes, "budget_bytes": self.budget_bytes,
                "hits": self.hits, "misses": self.misses}
