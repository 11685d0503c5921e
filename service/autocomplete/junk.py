"""Suggestions nobody would accept: caught before they are shown.

A small model with a prompt it does not expect falls into a few shapes of output that are never
worth a Tab:
- ``run``: a run of digits or punctuation with no letter (``10000000000000000000``,
  ``1.1.1.1.1.1``) where the typed text is words, not figures;
- ``repeat``: a short pattern repeated over and over (``ab ab ab ab``, ``the the the the``),
  held back from its second time until it stops or is repeated ``REPEATS`` times;
- ``heading``: the opening of the grounding passage (its title or heading) suggested as if it
  followed the typed text, when the typed text does not lead into it.

:class:`JunkFilter` sees the suggestion as it grows and says how much of it may be shown now:
the end that could still turn out to be junk is held back (a digit run until a letter or a
space ends it, the passage's opening until it is long enough to tell), so a junk suggestion is
dropped whole rather than shown in part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUN_CHARS = 6  # a letterless run this long is junk (where the typed text is words)
WORDY_SHARE = 0.5  # the typed text's recent letters over its non-space characters: words, not figures
RECENT_CHARS = 60  # the typed text's end that says whether it is words or figures
REPEATS = 4  # a pattern of at most PATTERN_CHARS, this many times in a row, is junk
PATTERN_CHARS = 4
HEADING_CHARS = 12  # the passage's opening suggested this far is junk
OPENING_CHARS = 80  # how much of the passage counts as its opening

_REPEAT = re.compile(r"(.{1,%d}?)\1{%d,}$" % (PATTERN_CHARS, REPEATS - 1), re.DOTALL)
_REPEATING = re.compile(r"(.{1,%d}?)\1+$" % PATTERN_CHARS, re.DOTALL)  # may yet become a repeat: held


@dataclass(frozen=True)
class Verdict:
    """How many characters of the suggestion may go out now, and the junk reason if it is junk
    (then only ``show`` characters, the good part before it, are ever shown)."""

    show: int
    reason: str | None = None


def _run_start(text: str, end: int) -> int:
    """Where the run of characters that are neither letters nor spaces ending at ``end`` starts."""
    while end > 0 and not text[end - 1].isalpha() and not text[end - 1].isspace():
        end -= 1
    return end


def _word_end(text: str, end: int) -> int:
    """``end`` moved back over the spaces before it."""
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


def _squash(text: str) -> str:
    return " ".join(text.split())


class JunkFilter:
    """Judges one suggestion for ``typed`` text, with ``passage`` (the grounding block, if any)."""

    def __init__(self, typed: str, passage: str = "") -> None:
        recent = [ch for ch in typed[-RECENT_CHARS:] if not ch.isspace()]
        self._wordy = not recent or sum(ch.isalpha() for ch in recent) / len(recent) >= WORDY_SHARE
        self._opening = _squash(passage)[:OPENING_CHARS]

    def judge(self, suggestion: str, final: bool) -> Verdict:
        """``suggestion``: everything suggested so far (shown or not); ``final``: nothing follows."""
        repeat = _REPEAT.search(suggestion)
        if repeat is not None and repeat.group(0).strip():
            return Verdict(_run_start(suggestion, repeat.start()), "repeat")
        hold = len(suggestion)
        repeating = None if final else _REPEATING.search(suggestion)
        if repeating is not None and repeating.group(1).strip() and len(repeating.group(0)) >= REPEATS:
            hold = repeating.start()
        if self._wordy:
            start = _run_start(suggestion, len(suggestion))
            run = len(suggestion) - start
            if run >= RUN_CHARS:
                return Verdict(_word_end(suggestion, start), "run")
            if not final and (run > 1 or any(ch.isdigit() for ch in suggestion[start:])):
                hold = min(hold, _word_end(suggestion, start))  # it waits: the next piece may end it, or make it junk
        if self._opening:
            said = _squash(suggestion)
            if said and self._opening.startswith(said):
                if len(said) >= HEADING_CHARS:
                    return Verdict(0, "heading")
                if not final:
                    hold = 0
        return Verdict(hold)
