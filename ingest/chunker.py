"""Structure-aware chunking: headings and paragraphs first, sentences and words only when needed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

CountTokens = Callable[[str], int]

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=\S)")


@dataclass(frozen=True)
class Unit:
    """A heading or a paragraph, with the heading trail it sits under and its token count."""

    text: str
    trail: tuple[str, ...]
    tokens: int
    is_heading: bool = False


def _blocks(text: str) -> list[str]:
    """Split text into blank-line separated blocks, keeping fenced code blocks whole."""
    blocks: list[str] = []
    current: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence and not line.strip():
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        if not in_fence and _HEADING.match(line) and current:
            blocks.append("\n".join(current))
            current = []
        current.append(line.rstrip())
        if not in_fence and _HEADING.match(line):
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


def _split_long(text: str, limit: int, count: CountTokens) -> list[str]:
    """Cut an over-long paragraph at sentence ends, then at word boundaries."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        candidate = f"{current} {sentence}".strip()
        if count(candidate) <= limit:
            current = candidate
            continue
        if current:
            pieces.append(current)
        if count(sentence) <= limit:
            current = sentence
            continue
        current = ""
        for word in sentence.split():
            candidate = f"{current} {word}".strip()
            if current and count(candidate) > limit:
                pieces.append(current)
                current = word
            else:
                current = candidate
    if current:
        pieces.append(current)
    return pieces


def _rooted(trail: list[tuple[int, str]], title: str) -> tuple[str, ...]:
    """Heading names under the document title (unless the first heading is the title)."""
    names = tuple(name for _, name in trail)
    return names if not title or names[:1] == (title,) else (title, *names)


def units_of(text: str, title: str, limit: int, count: CountTokens) -> list[Unit]:
    """Headings and paragraphs of a document, each no longer than ``limit`` tokens."""
    trail: list[tuple[int, str]] = []
    units: list[Unit] = []
    for block in _blocks(text):
        heading = _HEADING.match(block) if "\n" not in block else None
        if heading:
            level = len(heading.group(1))
            trail = [(lvl, name) for lvl, name in trail if lvl < level] + [(level, heading.group(2).strip())]
            units.append(Unit(block, _rooted(trail, title), count(block), is_heading=True))
            continue
        names = _rooted(trail, title)
        for piece in _split_long(block, limit, count) if count(block) > limit else [block]:
            units.append(Unit(piece, names, count(piece)))
    return units


def _tail(text: str, budget: int, count: CountTokens) -> str:
    """The last sentences of ``text`` that fit in ``budget`` tokens."""
    tail = ""
    for sentence in reversed(_SENTENCE_END.split(text)):
        candidate = f"{sentence} {tail}".strip()
        if count(candidate) > budget:
            break
        tail = candidate
    return tail


def chunk_document(
    text: str, title: str, count: CountTokens, target_tokens: int = 220, overlap_tokens: int = 32,
) -> list[str]:
    """Chunks of about ``target_tokens`` tokens that follow the document's structure.

    A chunk starts with its heading trail (``Title › Section``) so it reads well alone and
    retrieves on its section names. A new chunk begins at a heading once the current one
    has reached half the target; a chunk cut inside a section repeats the end of the
    previous one (``overlap_tokens``).
    """
    limit = max(16, target_tokens - 24)
    units = units_of(text, title, limit, count)
    chunks: list[str] = []
    body: list[Unit] = []

    def flush() -> list[Unit]:
        """Emit the chunk; trailing headings are handed back to open the next chunk."""
        nonlocal body
        held: list[Unit] = []
        while body and body[-1].is_heading:
            held.insert(0, body.pop())
        if body:
            first = body[0]
            crumb = " › ".join(first.trail[:-1] if first.is_heading else first.trail)
            texts = [u.text for u in body]
            chunks.append("\n\n".join([crumb, *texts] if crumb else texts))
        body = []
        return held

    for unit in units:
        size = sum(u.tokens for u in body)
        if unit.is_heading and size >= target_tokens // 2:
            body = flush()
        elif not unit.is_heading and size + unit.tokens > limit and any(not u.is_heading for u in body):
            last = body[-1]
            carried = _tail(last.text, overlap_tokens, count) if overlap_tokens > 0 and not last.is_heading else ""
            body = flush()
            if carried and not body:
                body = [Unit(carried, unit.trail, count(carried))]
        body.append(unit)
    flush()
    return chunks


_LONG_RUN_CACHE: dict[int, re.Pattern[str]] = {}


def break_long_runs(text: str, limit: int) -> str:
    """Cut runs of non-space characters longer than ``limit // 2`` (a base64 blob, minified code,
    one huge word) with line breaks, so that every later step can split them and token counts stay cheap."""
    width = max(1, limit // 2)
    pattern = _LONG_RUN_CACHE.setdefault(width, re.compile(r"\S{%d,}" % (width + 1)))
    return pattern.sub(lambda m: "\n".join(m.group(0)[i:i + width] for i in range(0, len(m.group(0)), width)), text)


def cap_chars(chunks: list[str], limit: int) -> list[str]:
    """Every chunk at most ``limit`` characters: a longer one is cut at the last whitespace before the
    limit (or at the limit when there is none)."""
    capped: list[str] = []
    for chunk in chunks:
        while len(chunk) > limit:
            cut = max(chunk.rfind("\n", 0, limit + 1), chunk.rfind(" ", 0, limit + 1))
            cut = cut if cut > limit // 2 else limit
            head, chunk = chunk[:cut].rstrip(), chunk[cut:].lstrip()
            if head:
                capped.append(head)
        if chunk.strip():
            capped.append(chunk)
    return capped
