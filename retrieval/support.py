"""The support check: is a small-model answer backed by one evidence sentence of its sources?

A deterministic gate, no model call. An answer is supported when

1. every checkable claim in it (numbers with their units, identifiers and code tokens,
   quoted strings) occurs in its sources, with numbers compared by value and unit, so that
   "4MB", "4 MB" and "four megabytes" are one value; and
2. one evidence window about what the question asks (holding at least half as many of its terms as
   the best-matching window) holds every claim (a number in the
   sentence itself or its label line; a name or quote there or in the neighbouring sentences),
   and at least half of the answer's own content words (those not already in the question), while
   its sentence holds most of the question's words the answer repeats (the subject its values are of);
3. when the question asks for a name ("Which method …?", "What exception …?"), the answer
   gives one the question did not already name, and the first evidence sentence (name-giving
   ones come first, see :func:`~smallfirst.retrieval.expectation.names_first`) or its label line
   holds it and at least ``NAME_SUBJECT_SHARE`` of the question's terms; an answer that is that
   name alone needs no more.

An answer is never supported when it says the sources do not answer, repeats a sentence (a loop
until its token limit), ends at a colon before what it announces, or only restates the question
(a question's word spelt as one word or two, "filename" for "file name", is no new word).

The second rule catches the common failure of a small model: a number that really is in the
sources, but belongs to a neighbouring setting, or a fluent paraphrase with nothing checkable.
The third catches a fluent answer to a "which name" question that names nothing new.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from smallfirst.retrieval.evidence import Evidence, content_words
from smallfirst.retrieval.expectation import LEAD, OPERATOR, expected, name_key, names_given

COVERAGE = 0.5  # share of the answer's new content words one window must hold
WINDOWS = 3  # evidence windows (best first) an answer may be backed by
MIN_RELATIVE_SCORE = 0.5  # ...each scoring at least this share of the best
SUBJECT_SHARE = 0.5  # ...and holding at least half as many of the question's terms as the best-matching one
RESTATED_SHARE = 0.7  # share of the question's words the answer repeats that the window's sentence must hold
NAME_SUBJECT_SHARE = 0.4  # share of the question's terms the sentence giving an asked-for name must hold

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
}
_UNITS = {
    "b": "b", "byte": "b", "bytes": "b",
    "kb": "kb", "kib": "kb", "kilobyte": "kb", "kilobytes": "kb",
    "mb": "mb", "mib": "mb", "megabyte": "mb", "megabytes": "mb",
    "gb": "gb", "gib": "gb", "gigabyte": "gb", "gigabytes": "gb",
    "tb": "tb", "tib": "tb", "terabyte": "tb", "terabytes": "tb",
    "ms": "ms", "millisecond": "ms", "milliseconds": "ms",
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "min", "mins": "min", "minute": "min", "minutes": "min",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "day": "day", "days": "day", "week": "week", "weeks": "week",
    "%": "%", "percent": "%", "per": None,
    "token": "token", "tokens": "token", "char": "char", "chars": "char", "character": "char", "characters": "char",
}
_TIME = re.compile(r"(?<![\w.:])(\d{1,2}):(\d{2})(?![\d:])")
_NUMBER = re.compile(
    r"(?<![\w.:])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?![\d:,]\d|[\d])(?![xX][0-9a-fA-F])(?![\w.]*[a-zA-Z_]{2,}\()\s?(%|[a-zA-Z]+)?"
    r"|\b(" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b(?:\s+([a-zA-Z%]+))?",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"`([^`\n]{1,80})`|\"([^\"\n]{2,80})\"")
_IDENTIFIER = re.compile(
    r"(?<![\w-])(--?[a-z][\w-]*"  # a command-line flag
    r"|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?"  # a dotted name
    r"|\w+\(\)"  # a call
    r"|0x[0-9a-fA-F]+"  # a hex literal
    r"|[A-Za-z]*_\w*|[a-z]+[A-Z]\w*|[A-Z][a-z0-9]+[A-Z]\w*|[A-Z]{2,}\w*)(?!\w)"  # snake_case, camelCase, PascalCase, CAPS
)
_CITATION = re.compile(r"\[\d+\]")
_REFUSAL = re.compile(r"\b(do(?:es)? not (?:say|cover|mention|contain|state)|no information|not (?:stated|mentioned))\b", re.I)


@dataclass(frozen=True)
class Claim:
    """A checkable piece of an answer, with its span in the answer text."""

    kind: str  # number | identifier | quote
    text: str
    start: int
    end: int
    key: tuple[object, ...]  # the normalised form compared with the sources


@dataclass
class Verdict:
    """The check's result: supported, and the spans of the answer that are not."""

    supported: bool
    unsupported: list[dict[str, object]] = field(default_factory=list)
    evidence: Evidence | None = None  # the window that backs the answer (or, when none does, the best one)

    def as_dict(self) -> dict[str, object]:
        return {"supported": self.supported, "unsupported": self.unsupported}


def _number_value(token: str) -> float | None:
    token = token.lower().replace(",", "")
    if token in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[token])
    try:
        return float(token)
    except ValueError:
        return None


def numbers(text: str) -> list[Claim]:
    """Numbers in ``text`` with their normalised unit (``None`` when no known unit follows);
    a time of day ("06:40", "6:40") is one value."""
    out = [Claim("number", m.group(0), m.start(), m.end(), (int(m.group(1)) * 60 + int(m.group(2)), "time"))
           for m in _TIME.finditer(text)]
    for m in _NUMBER.finditer(text):
        digits, unit_word = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        value = _number_value(digits)
        if value is None:
            continue
        unit = _UNITS.get((unit_word or "").lower())
        if m.group(3) and unit is None and value < 2:
            continue  # "one" alone is a pronoun far more often than a number
        end = m.end() if unit else m.start() + len(digits)
        out.append(Claim("number", text[m.start():end], m.start(), end, (value, unit)))
    return sorted(out, key=lambda c: c.start)


def claims(answer: str) -> list[Claim]:
    """The checkable claims of an answer: numbers, quoted strings and identifiers."""
    found = numbers(answer)
    taken = [(c.start, c.end) for c in found]
    for m in _QUOTED.finditer(answer):
        quote = m.group(1) or m.group(2)
        found.append(Claim("quote", quote, m.start(), m.end(), (" ".join(quote.lower().split()),)))
        taken.append((m.start(), m.end()))
    for m in _IDENTIFIER.finditer(answer):
        if any(a <= m.start() < b for a, b in taken):
            continue
        token = m.group(1).rstrip(".")
        found.append(Claim("identifier", token, m.start(), m.start() + len(token), (token.lower().removesuffix("()"),)))
    for m in OPERATOR.finditer(answer):
        if not any(a <= m.start() < b for a, b in taken):
            found.append(Claim("identifier", m.group(1), m.start(), m.end(), (m.group(1),)))
    return sorted(found, key=lambda c: c.start)


def _holds(claim: Claim, text: str, text_numbers: list[Claim]) -> bool:
    if claim.kind == "number":
        value, unit = claim.key
        return any(n.key[0] == value and (unit is None or n.key[1] is None or n.key[1] == unit) for n in text_numbers)
    needle = str(claim.key[0])
    return needle in " ".join(text.lower().split())


def _rejected(answer: str, why: str, evidence: Evidence | None) -> Verdict:
    """Unsupported as a whole (the span is the whole answer), with ``why``."""
    return Verdict(False, [{"text": answer, "start": 0, "end": len(answer), "why": why}], evidence)


_WH_PHRASE = re.compile(LEAD + r"(?:which|what(?!\s+(?:is|are|was|were|do|does|did|can|could|should|must|will|would)\b))"
                        r"\s+((?:\S+\s+){0,2}\S+)", re.IGNORECASE)


def _answer_kind(question: str) -> str:
    """The words of "Which file formats …?" that say what kind of thing answers it: an answer
    naming that kind ("The following files …") says nothing yet of what the question is about."""
    match = _WH_PHRASE.match(question)
    return match.group(1) if match else ""


def _repeats(answer: str) -> bool:
    """Whether a sentence of the answer comes again: a small model caught in a loop until its token
    limit ("This idiom is called … This idiom is called …")."""
    seen: set[str] = set()
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", answer):
        key = " ".join(sentence.lower().split())
        if len(key) < 12:
            continue
        if key in seen:
            return True
        seen.add(key)
    return False


def _new_words(answer_words: list[str], asked: set[str], question_words: list[str]) -> list[str]:
    """The answer's content words the question does not hold, also as one word ("filename" for
    "file name") or in two ("small first" for "smallfirst")."""
    asked = asked | {a + b for a, b in zip(question_words, question_words[1:])}
    joined = {i for i, (a, b) in enumerate(zip(answer_words, answer_words[1:])) if a + b in asked}
    return [w for i, w in enumerate(answer_words) if w not in asked and i not in joined and i - 1 not in joined]


def _only_names(new_words: list[str], names: list[str], kind: str) -> bool:
    """Whether the answer's new words are all parts of the names it gives, or the kind's word."""
    parts = {kind} | {w for name in names for w in content_words(name)}
    return all(w in parts for w in new_words)


def _stands_in(key: str, text: str) -> bool:
    """Whether a name (in :func:`name_key` form) stands in ``text`` as a word of its own, a plural
    allowed ("deques"): "esc" is not in "describes", nor "tab" in "table"."""
    return re.search(rf"(?<!\w){re.escape(key)}(?:e?s)?(?!\w)", text) is not None


def check_answer(question: str, answer: str, evidence: Sequence[Evidence], sources: Sequence[str]) -> Verdict:
    """Check ``answer`` against the ranked evidence windows and the full source texts."""
    best_window = evidence[0] if evidence else None
    clean = _CITATION.sub(" ", answer)
    if not clean.strip():
        return _rejected(answer, "empty answer", None)
    if _REFUSAL.search(clean):
        return _rejected(answer, "the answer says the sources do not answer", best_window)
    if _repeats(clean):
        return _rejected(answer, "the answer repeats itself", best_window)
    if answer.rstrip().endswith(":"):  # "The first line should be:", cut at the blank line before what it announced
        return _rejected(answer, "the answer stops before what it introduces", best_window)
    all_text = "\n".join(sources)
    all_numbers = numbers(all_text)
    found = claims(clean)
    missing = [c for c in found if not _holds(c, all_text, all_numbers)]
    if missing:
        return Verdict(False, [{"text": c.text, "start": c.start, "end": c.end, "why": f"{c.kind} not in the sources"}
                               for c in missing], best_window)
    asked = set(content_words(question))
    new_words = _new_words(content_words(clean), asked, content_words(question))
    restated = {w for w in content_words(clean) if w in asked} - set(content_words(_answer_kind(question)))
    asked_claims = {c.key for c in claims(question)}
    if not new_words and all(c.key in asked_claims for c in found):
        return _rejected(answer, "the answer only restates the question", best_window)
    expectation = expected(question)
    if expectation is not None:
        given = names_given(clean, question, expectation, all_text)
        if not given:
            return _rejected(answer, f"the question asks for {expectation.describe()} and the answer gives none it did not "
                                     "already name", best_window)
        top = " ".join(f"{best_window.sentence.label} {best_window.text}".lower().split()) if best_window else ""
        if not any(_stands_in(name_key(name), top) for name in given):
            return _rejected(answer, "the name it gives is not in the best evidence sentence", best_window)
        terms = asked - set(content_words(_answer_kind(question))) or asked - {expectation.kind}
        if len(terms & set(content_words(top))) < NAME_SUBJECT_SHARE * len(terms):
            return _rejected(answer, "the sentence giving the name is not about what the question asks", best_window)
        if _only_names(new_words, given, expectation.kind):  # "--with-dtrace [1].": the name is the whole claim
            return Verdict(True, [], best_window)
    best = max((ev.score for ev in evidence), default=0.0)  # names_first may put a lower score first
    candidates = [ev for ev in evidence[:WINDOWS] if ev.score >= MIN_RELATIVE_SCORE * best]
    # The window must be about what the question asks: at least half as many of its terms as the best-matching one.
    about = {id(ev): len(asked & set(content_words(f"{ev.sentence.label} {ev.text}"))) for ev in candidates}
    most = max(about.values(), default=0)
    for ev in candidates:
        if about[id(ev)] < SUBJECT_SHARE * most:
            continue
        core = f"{ev.sentence.label} {ev.text}"  # numbers must stand in the sentence itself...
        window_text = ev.window()  # ...names and quotes may be in its neighbours too
        core_numbers = numbers(core)
        if not all(_holds(c, core if c.kind == "number" else window_text, core_numbers) for c in found):
            continue
        window = set(content_words(window_text))
        if len(restated & set(content_words(core))) < RESTATED_SHARE * len(restated):  # said of something else
            continue
        if sum(w in window for w in new_words) >= COVERAGE * len(new_words):
            return Verdict(True, [], ev)
    why = "its values are not stated beside what the question asks about" if found else \
        "no single evidence sentence covers it"
    return _rejected(answer, why, best_window)


def quote_evidence(evidence: Evidence | None, number: int | None = None) -> str:
    """The text shown instead of an unsupported answer: the evidence, quoted and cited."""
    if evidence is None:
        return "The documents do not answer this clearly."
    cite = f" [{number}]" if number is not None else ""
    text = " ".join(evidence.text.split())
    return f"The answer could not be checked against the documents. The closest passage says: \u201c{text}\u201d{cite}"
