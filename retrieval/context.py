"""Context assembly: the best hits numbered for citation, and the chunks that fit a token budget."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from smallfirst.retrieval.store import Hit

# Lines that could pose as the prompt frame's own structure are defused: retrieved text is data.
_FRAME_LINE = re.compile(r"^\s*(#{3,}|question\s*:|answer\s*:|sources\s*:|\[\d+\])", re.IGNORECASE | re.MULTILINE)
# The prompt fences sources between <<< and >>>: a run of three or more in the text itself is broken up.
_FENCE_RUN = re.compile(r"<{3,}|>{3,}")
# More characters than this per budget token cannot fit (a token is rarely over 12 characters), so such
# a hit is left out of the text before anything counts its tokens: a huge chunk never stalls a thread.
MAX_CHARS_PER_TOKEN = 12


@dataclass(frozen=True)
class Context:
    """The hits an answer cites, in citation order ([1] first), and the text of those whose whole
    chunk fits the prompt budget, each under its own number."""

    text: str
    sources: tuple[Hit, ...]
    tokens: int


def defuse(text: str) -> str:
    """Neutralise lines of retrieved text that mimic the prompt frame's markers."""
    text = _FENCE_RUN.sub(lambda m: " ".join(m.group(0)), text)
    return _FRAME_LINE.sub(lambda m: "- " + m.group(0).lstrip(), text).strip()


def format_source(number: int, hit: Hit) -> str:
    """One numbered source block."""
    title = " ".join(hit.title.split()) or hit.doc_id
    return f"[{number}] {title}\n{defuse(hit.text)}"


def assemble_context(
    hits: Sequence[Hit], budget_tokens: int, count_tokens: Callable[[str], int], min_score: float = 0.0,
) -> Context:
    """Number the hits best-first, without duplicates or low scores, and put the chunks that fit
    the budget in the text.

    Every numbered hit is a source: the small tier's evidence comes from its sentences, and a
    sentence costs the prompt far less than a chunk. Only whole chunks go in the text (the large
    tier's context); one that does not fit is skipped rather than ending it, so a long chunk never
    crowds out a shorter, lower-ranked one.
    """
    chosen: list[Hit] = []
    blocks: list[str] = []
    used = 0
    seen: set[str] = set()
    max_chars = budget_tokens * MAX_CHARS_PER_TOKEN
    for hit in sorted(hits, key=lambda h: h.score, reverse=True):
        key = " ".join(hit.text.split())
        if hit.score < min_score or not key or key in seen:
            continue
        seen.add(key)
        chosen.append(hit)
        if len(hit.text) > max_chars:
            continue
        block = format_source(len(chosen), hit)
        cost = count_tokens(block + "\n\n")
        if used + cost > budget_tokens:
            continue
        blocks.append(block)
        used += cost
    return Context(text="\n\n".join(blocks), sources=tuple(chosen), tokens=used)
