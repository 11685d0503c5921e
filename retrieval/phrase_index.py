"""Which chunks hold a phrase: word trigrams of every chunk's text, for copying as the user types.

Autocomplete copies a document's own next words when the last words typed stand in it. Search by
meaning finds the right chunk only when the typed text is about what the chunk is about; a phrase
look-up finds it whenever the words are there. Words are runs of letters and digits, lowercased
(Qdrant's default word tokenizer, so the embedded store and a Qdrant server's ``MatchPhrase``
agree). Each chunk's distinct trigrams are hashed into one sorted int64 array beside the chunk's
serial number; a look-up is a binary search per trigram. About 12 bytes a word of the collection.

Like :class:`~smallfirst.retrieval.exact_index.ExactIndex`, it is rebuilt from the store at open,
kept in step with every write made through the store, and used from one thread.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

GRAM = 3  # words per hashed phrase
NARROW_GRAMS = 8  # trigrams, back from the end, that may narrow the chunks found
_WORD = re.compile(r"[^\W_]+")


def phrase_words(text: str) -> list[str]:
    """The words a phrase is matched on: runs of letters and digits, lowercased."""
    return [word.lower() for word in _WORD.findall(text)]


def _keys(words: Sequence[str]) -> np.ndarray:
    """The distinct hashes of the word trigrams of ``words``."""
    if len(words) < GRAM:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.fromiter((hash(tuple(words[i:i + GRAM])) for i in range(len(words) - GRAM + 1)),
                                 dtype=np.int64, count=len(words) - GRAM + 1))


class PhraseIndex:
    """Trigram hashes to chunks (point ids); a replaced or removed chunk is forgotten."""

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.int64)  # sorted
        self._serials = np.zeros(0, dtype=np.int32)  # the chunk of each key
        self._pending: list[tuple[np.ndarray, int]] = []  # added since the last merge
        self._points: list[str | None] = []  # serial -> point id; None once removed
        self._serial_of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._serial_of)

    def add(self, entries: Iterable[tuple[str, str]]) -> None:
        """Insert or replace chunks: (point id, text)."""
        for point_id, text in entries:
            self._forget(point_id)
            serial = len(self._points)
            self._points.append(point_id)
            self._serial_of[point_id] = serial
            self._pending.append((_keys(phrase_words(text)), serial))

    def remove(self, point_ids: Iterable[str]) -> None:
        for point_id in point_ids:
            self._forget(point_id)

    def find(self, text: str, limit: int) -> list[str]:
        """Point ids of up to ``limit`` chunks holding the last three words of ``text``. Where more
        hold them, those that also hold the trigrams before stay, as far back as keeps any."""
        words = phrase_words(text)
        if len(words) < GRAM or limit <= 0:
            return []
        self._merge()
        found: set[int] | None = None
        for end in range(len(words), GRAM - 1, -1)[:NARROW_GRAMS]:
            holding = self._holding(words[end - GRAM:end])
            narrowed = holding if found is None else found & holding
            if not narrowed:
                break
            found = narrowed
            if len(found) <= limit:
                break
        points = (self._points[serial] for serial in sorted(found or ()))
        return [point for point in points if point is not None][:limit]

    def _holding(self, gram: Sequence[str]) -> set[int]:
        key = hash(tuple(gram))
        lo, hi = np.searchsorted(self._keys, key, side="left"), np.searchsorted(self._keys, key, side="right")
        return {int(s) for s in self._serials[lo:hi] if self._points[int(s)] is not None}

    def _forget(self, point_id: str) -> None:
        serial = self._serial_of.pop(point_id, None)
        if serial is not None:
            self._points[serial] = None

    def _merge(self) -> None:
        """Fold chunks added since the last look-up into the sorted arrays, dropping forgotten ones
        once they are the majority."""
        if not self._pending and len(self._serial_of) * 2 >= len(self._points):
            return
        keys = [self._keys, *(k for k, _ in self._pending)]
        serials = [self._serials, *(np.full(k.size, s, dtype=np.int32) for k, s in self._pending)]
        self._pending = []
        all_keys, all_serials = np.concatenate(keys), np.concatenate(serials)
        if len(self._serial_of) * 2 < len(self._points):
            all_keys, all_serials = self._compact(all_keys, all_serials)
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._serials = all_keys[order], all_serials[order]

    def _compact(self, keys: np.ndarray, serials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Renumber the live chunks from 0 and drop the keys of the others."""
        renumber = np.full(len(self._points), -1, dtype=np.int32)
        live = [point for point in self._points if point is not None]
        for new, point in enumerate(live):
            renumber[self._serial_of[point]] = new
        self._points = list(live)
        self._serial_of = {point: i for i, point in enumerate(live)}
        mapped = renumber[serials] if serials.size else serials
        keep = mapped >= 0
        return keys[keep], mapped[keep]
