"""Answers picked from the evidence, not written: the spans a question's shape can be answered with.

For each shape, the candidates come from the best evidence sentences (with their label lines):

- a value: the numbers with their units, times, paths and quoted or code-shaped values;
- a count: the numbers, in digits or words;
- a name: the names a sentence gives that the question does not
  (see :func:`~smallfirst.retrieval.expectation.names_given`);
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
NAME_SENTENCES = 2  # ...for a name, as the name choice always had it
MAX_CANDIDATES = 8
MIN_DESCRIPTION_WORDS = 5

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


def _looks_like_code(name: str) -> bool:
    return bool(re.search(r"[_.()/@%-]|[a-z][A-Z]|^[A-Z0-9_]{2,}$", name))


def _names(question: str, evidence: Sequence[Evidence], sources: str) -> list[Candidate]:
    expectation = expected(question)
    kind = expectation or Expectation("name")
    out: list[Candidate] = []
    seen: set[str] = set()
    for rank, ev in enumerate(evidence[:NAME_SENTENCES]):
        for name in names_given(_core(ev), question, kind, sources):
            key = name_key(name)
            if key in seen or all(len(part) <= 1 for part in re.split(r"[^A-Za-z0-9]+", name) if part):
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
    "lm_score", "lm_best", "lm_gap", "options", "sentence_rank", "sentence_relative_score",
    "question_terms_in_sentence", "span_near_question", *(f"kind_{k}" for k in SPAN_KINDS),
    "negated_sentence", "yes_negated", "no_negated", "shape_probability", "top_hit_score", "hit_gap", "rules_pass",
)


def _nearness(candidate: Candidate, question: str) -> float:
    """How close the span stands to the question's words in its sentence: 1 beside one, falling with distance."""
    if candidate.kind in ("sentence", "yes", "no"):
        return 0.0
    tokens = words(_core(candidate.evidence))
    span = words(candidate.text)
    asked = set(content_words(question))
    if not span or not asked:
        return 0.0
    starts = [i for i in range(len(tokens) - len(span) + 1) if tokens[i:i + len(span)] == span]
    near = [i for i, t in enumerate(tokens) if t in asked or (len(t) > 3 and t.rstrip("s") in asked)]
    if not starts or not near:
        return 0.0
    distance = min(abs(a - b) for a in starts for b in near)
    return 1.0 / (1.0 + distance)


def candidate_features(candidates_: Sequence[Candidate], lm_scores: Sequence[float], question: str,
                       evidence: Sequence[Evidence], hit_scores: Sequence[float], shape_probability: float,
                       rules: Sequence[bool]) -> list[dict[str, float]]:
    """Each candidate's features for the pick model: the small model's score of it and its rank among
    the options, where its sentence ranks and how much of the question it holds, how near the span
    stands to the question's words, the span's kind, negation for yes or no, and the retrieval."""
    best_lm = max(lm_scores) if lm_scores else 0.0
    order = sorted(range(len(lm_scores)), key=lambda i: -lm_scores[i])
    lm_rank = {i: r for r, i in enumerate(order)}
    best_evidence = max((ev.score for ev in evidence), default=0.0)
    terms = set(content_words(question))
    out = []
    for i, c in enumerate(candidates_):
        sentence_words = set(content_words(f"{c.evidence.sentence.label} {c.evidence.text}"))
        negated = float(bool(_NEGATION.search(c.evidence.text)))
        out.append({
            "lm_score": lm_scores[i],
            "lm_best": float(lm_rank[i] == 0),
            "lm_gap": best_lm - lm_scores[i],
            "options": float(min(len(candidates_), MAX_CANDIDATES)),
            "sentence_rank": float(c.rank),
            "sentence_relative_score": c.evidence.score / best_evidence if best_evidence > 0 else 0.0,
            "question_terms_in_sentence": len(terms & sentence_words) / len(terms) if terms else 0.0,
            "span_near_question": _nearness(c, question),
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
