"""Grounding for autocomplete: which document passage goes in front of the typed text.

Looked up only when a word is completed (the query is the text up to its last word boundary),
and cached per query, so most keystrokes cost no embedding or search at all. A passage that
still ranks near the top is kept, so the prompt prefix (and its KV cache) does not flip-flop
between near-equal passages.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from smallfirst.retrieval.store import Hit

QUERY_CHARS = 300
MIN_QUERY_WORDS = 3
KEEP_MARGIN = 0.05  # the current passage stays while it scores within this of the best hit


@dataclass(frozen=True)
class Grounding:
    """A passage prefilled in front of a typist's text."""

    id: str
    doc_id: str
    title: str
    chunk_index: int
    block: str  # exactly what precedes the typed text in the prompt
    tokens: tuple[int, ...] = field(default=(), compare=False)
    passage: str = field(default="", compare=False)  # the whole passage, for copying from

    def describe(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "title": self.title, "chunk_index": self.chunk_index}


def grounding_query(text: str) -> str | None:
    """The recent text up to its last complete word, or None when too little has been typed."""
    if text and text[-1].isalnum():
        cut = max(text.rfind(c) for c in " \t\n")
        text = text[: cut + 1] if cut >= 0 else ""
    words = text[-QUERY_CHARS:].split()
    if len(text) > QUERY_CHARS:
        words = words[1:]  # the first may be cut
    if len(words) < MIN_QUERY_WORDS:
        return None
    return " ".join(words)


@dataclass(frozen=True)
class Lookup:
    """What one look-up of the typed words found: the passages nearest their meaning (best
    first), and passages that hold their last words as written (for copying from)."""

    hits: Sequence[Hit] = ()
    phrases: Sequence[Hit] = ()

    def passages(self) -> list[Hit]:
        """Every passage found, those holding the words first."""
        return [*self.phrases, *self.hits]


Search = Callable[[str, str | None], Awaitable[Lookup]]


class Grounder:
    """Query → look-up, cached (LRU); picks the passage for a typist."""

    def __init__(self, search: Search, min_score: float, cache_size: int = 1024) -> None:
        self._search = search
        self._min_score = min_score
        self._cache: OrderedDict[tuple[str | None, str], Lookup] = OrderedDict()
        self._cache_size = cache_size

    async def lookup(self, query: str, collection: str | None, cached: bool = True) -> Lookup:
        key = (collection, query)
        if cached and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        found = await self._search(query, collection)
        self._cache[key] = found
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found

    def cached(self, query: tuple[str | None, str] | None) -> Lookup:
        """What was last found for ``query`` (collection, words), if still cached; no search."""
        return self._cache.get(query, Lookup()) if query is not None else Lookup()

    async def pick(self, query: str, collection: str | None, current: Grounding | None, cached: bool = True) -> Hit | None:
        """A new passage for ``query``, or None to keep ``current`` (while it still ranks near the
        top, or when nothing scores high enough)."""
        hits = [h for h in (await self.lookup(query, collection, cached)).hits if h.score >= self._min_score]
        if not hits:
            return None
        if current is not None:
            for hit in hits:
                if hit.id == current.id and hit.score >= hits[0].score - KEEP_MARGIN:
                    return None
        return hits[0]
