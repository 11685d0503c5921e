"""Answers picked from the evidence, not written: the spans a question's shape can be answered with.

For each shape, the candidates come from the best evidence sentences (with their label lines):

- a value: the numbers with their units, times, versions, ranges, hyphenated values with a digit
  (UTF-8), paths and quoted or code-shaped values;
- a count: the numbers, in digits or words;
- a name: the names a sentence gives that the question does not
  (see :func:`~smallfirst.retrieval.expectation.names_given`), and its capitalised names
  ("Berkeley DB 2", "MD5");
- yes or no: "Yes" and "No", each with the best sentence that decides it;
- a description: the best sentences themselves.

The small model scores the candidates as continuations of the answer prompt and the likeliest is
the answer, shown with its citation; so an answer never states a figure or a name its cited
sentence does not hold. Nothing here calls a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from smallfirst.retrieval.evidence import Evidence, content_words, words
from smallfirst.retrieval.expectation import Expectation, answer_phrase, expected, name_key, names_given
from smallfirst.retrieval.support import claims, numbers

SPAN_KINDS = ("number_unit", "number", "path", "code", "name", "sentence", "yes", "no")
SENTENCES = 3  # best evidence sentences whose spans are candidates
NAME_SENTENCES = 3  # ...for a name
MAX_CANDIDATES = 8
MIN_DESCRIPTION_WORDS = 5

# A hyphenated value with a digit in it (UTF-8, SHA-256, 4-space), a version (2.4.59) and a range (10-20, 4 to 17, 1–5 seconds): values the number pattern takes apart.
_HYPHENATED = re.compile(r"(?<![\w.-])(?=[\w-]*\d)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+(?![\w-])")
_VERSION = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?![\w.]*\w)")
_RANGE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*(?:-|–|to)\s*\d+(?:\.\d+)?(?:\s?(?:%|[a-zA-Z]+\b))?(?![\w.]*\d)")
_PATH = re.compile(r"(?<![\w/])(?:~|\.{0,2})?(?:/[\w.+@-]+){2,}/?")
_CITED_END = re.compile(r"[\s.;:,]+$")


@dataclass(frozen=True)
class Candidate:
    """A span the answer may be: the text scored, the answer shown, and where it stands."""

    text: str  # what the model scores as the continuation of "Answer:"
    answer: str  # the answer as shown, before its citation
    evidence: Evidence  # the sentence it comes from
    rank: int  # that sentence's place in the ranked evidence
    kind: str  # one of SPAN_KINDS


def _core(ev: Evidence) -> str:
    return f"{ev.sentence.label}\n{ev.text}" if ev.sentence.label else ev.text


def _flat(text: str) -> str:
    return " ".join(text.split())


def _whole(claim_start: int, claim_end: int, text: str) -> bool:
    """Whether a number stands on its own, not as a piece of an address or a version ("127.0" of 127.0.0.1)."""
    before, after = text[max(0, claim_start - 2):claim_start], text[claim_end:claim_end + 2]
    return not re.fullmatch(r"\.\d", after) and not re.fullmatch(r"\d\.", before)


def _values(question: str, evidence: Sequence[Evidence], counting: bool) -> list[Candidate]:
    asked = {c.key for c in numbers(question)}
    asked_words = set(words(question))
    flat_question = " ".join(question.lower().split())
    out: list[Candidate] = []
    seen: set[str] = set()
    for rank, ev in enumerate(evidence[:SENTENCES]):
        core = _core(ev)
        spans = [(c.text, "number_unit" if c.key[1] is not None else "number")
                 for c in numbers(core) if c.key not in asked and _whole(c.start, c.end, core)]
        if counting:
            spans = [(s, k) for s, k in spans if re.fullmatch(r"\d+|[a-z]+", s.strip(), re.IGNORECASE)]
        else:
            spans += [(m.group(0), "number") for m in _VERSION.finditer(core)]
            spans += [(m.group(0), "code") for m in _HYPHENATED.finditer(core) if not _RANGE.fullmatch(m.group(0))]
            spans += [(_range_span(m.group(0)), "number_unit") for m in _RANGE.finditer(core)]
            spans += [(p, "path") for p in _PATH.findall(core)]
            spans += [(c.text, "code") for c in claims(core) if c.kind in ("quote", "identifier")
                      and name_key(c.text) not in asked_words and len(c.text) > 1]
        for span, kind in spans:
            key = span.lower()
            if key in seen or key in flat_question:
                continue
            seen.add(key)
            out.append(Candidate(span, span, ev, rank, kind))
    return out[:MAX_CANDIDATES]


def _range_span(text: str) -> str:
    """A range, with the word after it kept only when it is a unit: "4 to 17", "1-5 seconds"."""
    parts = text.split()
    if len(parts) > 1 and parts[-1].isalpha() and numbers(text)[-1].key[1] is None:
        return " ".join(parts[:-1])
    return text


def _looks_like_code(name: str) -> bool:
    return bool(re.search(r"[_.()/@%-]|[a-z][A-Z]|^[A-Z0-9_]{2,}$", name))


# Names no kind word or code shape finds: several capitalised words ("Berkeley DB 2", "RFC 2617"),
# and capitals with digits ("MD5", "SHA1").
_CAPITALISED = re.compile(r"(?<![\w-])[A-Z][\w+-]*(?:\s+(?:[A-Z][\w+-]*|\d[\w.]*)){1,3}(?![\w-])")
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*)$")
_CAPS_DIGITS = re.compile(r"(?<![\w-])[A-Z]+\d[A-Z0-9]*(?![\w-])")


def _plain_names(core: str, question: str) -> list[str]:
    """Capitalised names in ``core`` that are not the question's own words."""
    asked = set(content_words(question))
    found = []
    for m in _CAPITALISED.finditer(core):
        found.append(m.group(0))
        rest = m.group(0).split(None, 1)[1]
        if _SENTENCE_START.search(core, 0, m.start()) and (" " in rest or re.search(r"[A-Z0-9]{2}", rest)):
            found.append(rest)  # "See RFC 2617" at a sentence's start may be "RFC 2617"
    found += _CAPS_DIGITS.findall(core)
    return [name for name in found if name.lower() not in question.lower() and set(content_words(name)) - asked]


def _names(question: str, evidence: Sequence[Evidence], sources: str) -> list[Candidate]:
    expectation = expected(question)
    kind = expectation or Expectation("name")
    out: list[Candidate] = []
    seen: set[str] = set()
    for rank, ev in enumerate(evidence[:NAME_SENTENCES]):
        core = _core(ev)
        for name in [*names_given(core, question, kind, sources), *_plain_names(core, question)]:
            key = name_key(name)
            if key in seen or (not name.startswith("-")
                               and all(len(part) <= 1 for part in re.split(r"[^A-Za-z0-9]+", name) if part)):
                continue
            seen.add(key)
            shown = answer_phrase(name, expectation) if expectation is not None else name
            out.append(Candidate(name, shown, ev, rank, "code" if _looks_like_code(name) else "name"))
    return out[:MAX_CANDIDATES]


def _sentences(question: str, evidence: Sequence[Evidence]) -> list[Candidate]:
    asked = set(content_words(question))
    out: list[Candidate] = []
    seen: set[str] = set()
    for rank, ev in enumerate(evidence[:SENTENCES]):
        text = _flat(ev.text)
        if len(text.split()) < MIN_DESCRIPTION_WORDS or text.lower() in seen or text.endswith(":"):
            continue
        if not set(content_words(text)) - asked:  # says nothing the question did not
            continue
        seen.add(text.lower())
        out.append(Candidate(text, text, ev, rank, "sentence"))
    return out


def _yes_no(evidence: Sequence[Evidence]) -> list[Candidate]:
    if not evidence:
        return []
    best = evidence[0]
    text = _flat(best.text)
    return [Candidate("Yes", f"Yes. {text}", best, 0, "yes"), Candidate("No", f"No. {text}", best, 0, "no")]


def candidates(shape: str, question: str, evidence: Sequence[Evidence], sources: str) -> list[Candidate]:
    """The spans of the evidence a question of ``shape`` may be answered with, best sentence first
    (none when its best sentences hold no span of that shape: the small model then writes)."""
    if shape in ("value", "count"):
        return _values(question, evidence, counting=shape == "count")
    if shape == "name":
        return _names(question, evidence, sources)
    if shape == "yesno":
        return _yes_no(evidence)
    if shape == "description":
        return _sentences(question, evidence)
    raise ValueError(f"unknown answer shape {shape!r}")


def cited(candidate: Candidate) -> str:
    """The answer shown: the span (or sentence) with its source's number."""
    return f"{_CITED_END.sub('', candidate.answer)} [{candidate.evidence.source + 1}]."


_NEGATION = re.compile(r"\b(?:not|no|never|cannot|none|neither|nor|without)\b|n't\b", re.IGNORECASE)
CANDIDATE_FEATURES = (
    "lm_score", "lm_best", "lm_gap", "lm_z", "options", "sentence_rank", "sentence_relative_score",
    "question_terms_in_sentence", "span_near_question", "question_within_3", "question_within_8", "span_in_question",
    "span_in_label", "span_position", "span_words", "span_repeats", *(f"kind_{k}" for k in SPAN_KINDS),
    "negated_sentence", "yes_negated", "no_negated", "shape_probability", "top_hit_score", "hit_gap", "rules_pass",
)
REPEAT_SENTENCES = 5  # best evidence sentences in which a span's repeats are counted


def _starts(tokens: list[str], span: list[str]) -> list[int]:
    """Where ``span`` starts in ``tokens`` (none for an empty span)."""
    return [i for i in range(len(tokens) - len(span) + 1) if span and tokens[i:i + len(span)] == span]


def _span_context(candidate: Candidate, question: str) -> dict[str, float]:
    """Where the span stands in its sentence: how close to the question's words (1 beside one,
    falling with distance), the share of the question's terms within 3 and 8 words of it, its
    relative position, whether the label line holds it, how much of it the question says, its length."""
    asked = set(content_words(question))
    tokens = words(_core(candidate.evidence))
    span = words(candidate.text)
    starts = _starts(tokens, span) if candidate.kind not in ("sentence", "yes", "no") else []
    near = [i for i, t in enumerate(tokens) if t in asked or (len(t) > 3 and t.rstrip("s") in asked)]

    def within(k: int) -> float:
        shares = [len(asked & set(content_words(" ".join(tokens[max(0, start - k):start]
                                                         + tokens[start + len(span):start + len(span) + k]))))
                  / len(asked) for start in starts] if asked else []
        return max(shares, default=0.0)

    span_terms = set(content_words(candidate.text))
    label = candidate.evidence.sentence.label
    return {
        "span_near_question": 1.0 / (1.0 + min(abs(a - b) for a in starts for b in near)) if starts and near else 0.0,
        "question_within_3": within(3),
        "question_within_8": within(8),
        "span_in_question": len(span_terms & asked) / len(span_terms) if span_terms else 0.0,
        "span_in_label": float(bool(label) and candidate.text.lower() in label.lower()),
        "span_position": starts[0] / max(1, len(tokens)) if starts else 1.0,
        "span_words": float(len(span)),
    }


def candidate_features(candidates_: Sequence[Candidate], lm_scores: Sequence[float], question: str,
                       evidence: Sequence[Evidence], hit_scores: Sequence[float], shape_probability: float,
                       rules: Sequence[bool]) -> list[dict[str, float]]:
    """Each candidate's features for the pick model: the small model's score of it and its rank among
    the options, where its sentence ranks and how much of the question it holds, where the span
    stands among the question's words, how often the best sentences repeat it, the span's kind,
    negation for yes or no, and the retrieval."""
    best_lm = max(lm_scores) if lm_scores else 0.0
    mean_lm = sum(lm_scores) / len(lm_scores) if lm_scores else 0.0
    spread = (sum((s - mean_lm) ** 2 for s in lm_scores) / len(lm_scores)) ** 0.5 if lm_scores else 0.0
    order = sorted(range(len(lm_scores)), key=lambda i: -lm_scores[i])
    lm_rank = {i: r for r, i in enumerate(order)}
    best_evidence = max((ev.score for ev in evidence), default=0.0)
    terms = set(content_words(question))
    best_texts = [_core(ev).lower() for ev in evidence[:REPEAT_SENTENCES]]
    out = []
    for i, c in enumerate(candidates_):
        sentence_words = set(content_words(f"{c.evidence.sentence.label} {c.evidence.text}"))
        negated = float(bool(_NEGATION.search(c.evidence.text)))
        out.append({
            "lm_score": lm_scores[i],
            "lm_best": float(lm_rank[i] == 0),
            "lm_gap": best_lm - lm_scores[i],
            "lm_z": (lm_scores[i] - mean_lm) / spread if spread > 1e-9 else 0.0,
            "options": float(min(len(candidates_), MAX_CANDIDATES)),
            "sentence_rank": float(c.rank),
            "sentence_relative_score": c.evidence.score / best_evidence if best_evidence > 0 else 0.0,
            "question_terms_in_sentence": len(terms & sentence_words) / len(terms) if terms else 0.0,
            **_span_context(c, question),
            "span_repeats": float(sum(c.text.lower() in text for text in best_texts)),
            **{f"kind_{k}": float(c.kind == k) for k in SPAN_KINDS},
            "negated_sentence": negated,
            "yes_negated": negated * (c.kind == "yes"),
            "no_negated": negated * (c.kind == "no"),
            "shape_probability": shape_probability,
            "top_hit_score": hit_scores[0] if hit_scores else 0.0,
            "hit_gap": hit_scores[0] - hit_scores[1] if len(hit_scores) > 1 else 0.0,
            "rules_pass": float(rules[i]),
        })
    return out
