"""Copy before you generate: where the words just typed stand in a document passage, the
passage's own next words are the suggestion, with no model step.

The last words typed (at least ``KEY_WORDS`` words and ``KEY_CHARS`` characters, a word still
being typed included) are looked up in the passage, whitespace squashed and case ignored; where
they occur more than once, the occurrence that agrees with more of the typed text before them
wins. The continuation runs to the end of its clause (a comma, a semicolon, a sentence end, a
closing bracket) and is cut like a model's suggestion afterwards (see
:class:`~smallfirst.service.autocomplete.suggestion.SuggestionCutter`).
"""

from __future__ import annotations

import re
from typing import Sequence

KEY_WORDS = 3
KEY_CHARS = 12
CONTEXT_CHARS = 200  # how far back the typed text is compared to choose among occurrences
MAX_CHARS = 160  # a copied continuation is at most this long
_CLAUSE_END = re.compile(r"[,;:!?)\]]|\.(?=\s|$)")


def _squash(text: str) -> str:
    return " ".join(text.split())


def lookup_key(typed: str) -> str | None:
    """The end of the typed text to look up: its last ``KEY_WORDS`` words (the one being typed
    counts), with a trailing space kept; None when too little is typed."""
    trailing = bool(typed) and typed[-1].isspace()
    words = typed.split()
    if len(words) < KEY_WORDS:
        return None
    key = " ".join(words[-KEY_WORDS:])
    extra = KEY_WORDS
    while len(key) < KEY_CHARS and extra < len(words):
        extra += 1
        key = " ".join(words[-extra:])
    if len(key) < KEY_CHARS:
        return None
    return key + (" " if trailing else "")


def _agreement(typed: str, passage: str, end: int) -> int:
    """How many characters before ``end`` the typed text and the passage share, compared backwards."""
    n = 0
    limit = min(len(typed), end, CONTEXT_CHARS)
    while n < limit and typed[-1 - n] == passage[end - 1 - n]:
        n += 1
    return n


def copied(typed: str, passages: Sequence[str]) -> tuple[int, str] | None:
    """Which passage, and the continuation of the last words typed in it: the passage that
    agrees with more of the typed text before them (the first, on a tie); None where none holds them."""
    key = lookup_key(typed)
    if key is None:
        return None
    found = [(c[0], -i, c[1]) for i, c in enumerate(continuation(typed, passage, key) if passage else None
                                                      for passage in passages) if c is not None]
    if not found:
        return None
    _, index, text = max(found)
    return -index, text


def continuation(typed: str, passage: str, key: str) -> tuple[int, str] | None:
    """How far the typed text agrees with the passage before the ``key`` (the last words typed,
    see :func:`lookup_key`), and the passage's text after it to the end of its clause; None
    where the key does not occur there or nothing follows it."""
    text = _squash(passage)
    lowered = text.lower()
    said = _squash(typed).lower() + (" " if key.endswith(" ") else "")
    needle = key.lower()
    best, best_end = -1, -1
    at = lowered.find(needle)
    while at >= 0:
        end = at + len(needle)
        score = _agreement(said, lowered, end)
        if score > best:
            best, best_end = score, end
        at = lowered.find(needle, at + 1)
    if best_end < 0:
        return None
    rest = text[best_end:best_end + MAX_CHARS]
    stop = _CLAUSE_END.search(rest, 1 if rest[:1] in ",;:" else 0)
    if stop is not None:
        rest = rest[:stop.end()]
    return (best, rest) if rest.strip() else None
