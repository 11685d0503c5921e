"""Saved KV states of prompt prefixes, so that a prompt starting with a prefix seen before
evaluates only what follows it.

An answer prompt is the fixed frame, then one passage per source block, then the question.
Each passage is tokenized on its own, and its prefill steps start at its first token and end at
its last, so its KV state depends only on the frame, the passages before it and its own
tokens, never on which prompt the context held before. The answer model saves the state of
sequence 0 (llama.cpp's per-sequence state, ~18 KB a token for Gemma 3 270M) where each
passage ends, under the exact tokens it covers. A new question on the same sources restores
the state after its last passage and evaluates only its own few tokens; the restored state is
bit for bit the one a cold prefill computes in the same steps (steps are shorter while someone
types), so the answer is the same as without it. Only states that end at a passage's edge are
restored into a prompt with passages.

Optionally (``SMALLFIRST_ANSWER_ASSEMBLE_PASSAGES``) each passage's own cells are also kept,
under its tokens alone, and placed into prompts where the passage follows other text: shifted to
their new positions, their first tokens evaluated again (see ``LocalBackend._assemble``). That is
not exact, as the other cells still attend to the text they were first computed after.

A changed chunk changes its tokens, so a stale state is never matched; it ages out of the LRU,
which is bounded in bytes.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Collection, Sequence


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

    def longest(self, tokens: Sequence[int], longer_than: int, at_most: int,
                only: Collection[int] | None = None) -> tuple[int, bytes] | None:
        """The longest stored prefix of ``tokens`` with a length in (``longer_than``, ``at_most``],
        and among ``only`` when given."""
        for length in sorted(self._lengths, reverse=True):
            if length > at_most or length > len(tokens) or (only is not None and length not in only):
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

    def get(self, key: Sequence[int]) -> bytes | None:
        """The blob stored under exactly ``key``, if any."""
        blob = self._entries.get(tuple(key))
        if blob is None:
            self.misses += 1
            return None
        self._entries.move_to_end(tuple(key))
        self.hits += 1
        return blob

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
