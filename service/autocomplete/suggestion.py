"""What of the model's output becomes a suggestion: short, useful, never an echo of the text.

Pieces arrive one token at a time and go out at once (the first token is what the user waits
for); the cutter decides where the suggestion ends:
- at a line break, a sentence end (not an abbreviation like "a.m."), or an end-of-text token;
- after ``max_tokens``, but not inside a word: up to ``WORD_GRACE`` more tokens finish it;
- when the model starts copying the typed text (its last ``ECHO_WINDOW`` characters,
  including at least ``ECHO_MIN_NEW`` suggested ones, already occur in the typed text);
- where markup starts, sending the plain text before it: an HTML tag (``<`` or ``>``), an HTML
  entity (``&`` then a letter or ``#``), or a Markdown emphasis marker (``*``, ``**``, and a
  ``_`` or ``__`` that opens or closes emphasis; one between two word characters, as in
  snake_case, is plain). A marker character that occurs in the typed text is allowed: the
  user is writing markup themselves. An ``&`` or a ``_`` that ends a piece is held until the
  next piece says which it is (a plain "& " still goes out);
- leading whitespace is held back, so a suggestion of only whitespace is never sent;
- where it turns into junk (see :mod:`~smallfirst.service.autocomplete.junk`): what could still
  turn out to be junk is held back, and a suggestion found to be junk ends there, ``dropped``
  saying why.
"""

from __future__ import annotations

from smallfirst.service.autocomplete.junk import JunkFilter, Verdict

ECHO_WINDOW = 24
ECHO_MIN_NEW = 8
WORD_GRACE = 4
_SENTENCE_END = ".!?"
_MARKERS = "<>&*_"


class SuggestionCutter:
    """Feed decoded pieces in order; each call says what to send and whether to stop."""

    def __init__(self, typed: str, max_tokens: int, passage: str = "", junk: bool = True) -> None:
        self._typed = typed[-600:]
        self._max_tokens = max_tokens
        self._junk = JunkFilter(typed, passage) if junk else None
        self.sent = ""
        self._held = ""
        self.tokens = 0
        self.finish = "length"
        self.dropped: str | None = None  # why the suggestion was cut as junk, if it was

    def feed(self, piece: str) -> tuple[str, bool]:
        """Returns (text to send now, whether the suggestion is complete)."""
        self.tokens += 1
        if self.tokens > self._max_tokens:  # only finishing a word now
            if not piece or not piece[0].isalnum():
                return self._release("length")
        cut = piece.find("\n")
        if cut >= 0:
            piece = piece[:cut]
        candidate = self._held + piece
        ends = cut >= 0
        markup, wait = self._markup(candidate, final=ends)
        if markup is not None:  # send the plain text before it, then stop
            candidate, wait, ends = candidate[:markup], markup, True
        candidate, pending = candidate[:wait], candidate[wait:]
        if not self.sent and not candidate.strip():
            self._held = candidate + pending
            return self._end("stop") if ends else ("", False)
        if self._echoes(candidate):
            return self._end("stop")
        finish = "stop" if ends or _ends_sentence(self._typed + self.sent + candidate) else None
        if finish is None and self.tokens >= self._max_tokens:
            text = self.sent + candidate
            mid_word = bool(text) and text[-1].isalnum()
            if not mid_word or self.tokens >= self._max_tokens + WORD_GRACE:
                finish = "length"
        return self._emit(candidate, pending, finish)

    def close(self) -> str:
        """The model ended the text: what was held back goes out now, unless it is junk or markup."""
        return self._release("stop")[0]

    def _release(self, finish: str) -> tuple[str, bool]:
        markup, wait = self._markup(self._held, final=True)
        held = self._held[:markup if markup is not None else wait]
        self._held = ""
        if not self.sent and not held.strip():
            return self._end(finish)
        return self._emit(held, "", finish)

    def _emit(self, candidate: str, pending: str, finish: str | None) -> tuple[str, bool]:
        """Send what the junk filter lets through of ``candidate`` now; hold the rest with ``pending``."""
        if self._junk is None:
            verdict = Verdict(len(self.sent) + len(candidate))
        else:
            verdict = self._junk.judge(self.sent + candidate, final=finish is not None)
        out = candidate[:max(0, verdict.show - len(self.sent))]
        self.sent += out
        if verdict.reason is not None:
            self.dropped = verdict.reason
            return self._send(out, "stop")
        self._held = candidate[len(out):] + pending
        if finish is not None:
            return self._send(out, finish)
        return out, False

    def _send(self, text: str, finish: str) -> tuple[str, bool]:
        self.finish = finish
        return text, True

    def _end(self, finish: str) -> tuple[str, bool]:
        self.finish = finish
        return "", True

    def _markup(self, text: str, final: bool) -> tuple[int | None, int]:
        """Where markup starts in ``text`` (None if nowhere), and where the text that must wait
        for the next piece starts (``len(text)`` if none; with ``final`` nothing follows)."""
        before = (self._typed + self.sent)[-1:]
        i = 0
        while i < len(text):
            ch = text[i]
            if ch not in _MARKERS or ch in self._typed:
                i += 1
                continue
            if ch in "<>*":
                return i, i
            if ch == "&":
                if i + 1 == len(text):
                    return (None, len(text)) if final else (None, i)
                if text[i + 1].isalpha() or text[i + 1] == "#":
                    return i, i
                i += 1
                continue
            end = i  # a run of "_": plain only between two word characters
            while end < len(text) and text[end] == "_":
                end += 1
            left = text[i - 1] if i else before
            if not (left and left.isalnum()):
                return i, i
            if end == len(text):
                return (i, i) if final else (None, i)
            if not text[end].isalnum():
                return i, i
            i = end
        return None, len(text)

    def _echoes(self, candidate: str) -> bool:
        suggested = self.sent + candidate
        if len(suggested.strip()) < ECHO_MIN_NEW:
            return False
        window = (self._typed + suggested)[-ECHO_WINDOW:]
        return window in self._typed


def _ends_sentence(text: str) -> bool:
    """Whether ``text`` ends a sentence: punctuation after a word of two or more letters
    (so "a.m.", "e.g." and "3.5" do not)."""
    text = text.rstrip()
    if not text or text[-1] not in _SENTENCE_END:
        return False
    word = text[:-1].rsplit(None, 1)[-1] if text[:-1].strip() else ""
    word = word.rsplit(".", 1)[-1]
    return len(word) >= 2 and word.isalpha()
