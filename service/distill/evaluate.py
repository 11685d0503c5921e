"""Base model against base + adapter, on the held-out pairs and on QA files, with llama.cpp.

Both are run the way the service runs its small tier (greedy, the answer stops, the same
``max_tokens``), so what is measured here is what users would get.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from smallfirst.retrieval.support import check_answer, claims
from smallfirst.service.distill.examples import Example
from smallfirst.service.llm.prompts import ANSWER_STOPS

Generate = Callable[[str], str]
_WORD = re.compile(r"\w+")
_CITATION = re.compile(r"\[\d+\]")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_f1(answer: str, target: str) -> float:
    """Word-overlap F1 of an answer against the teacher's (SQuAD style)."""
    got, want = Counter(_words(answer)), Counter(_words(target))
    same = sum((got & want).values())
    if not same:
        return 0.0
    precision, recall = same / sum(got.values()), same / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def same_form(answer: str, target: str) -> bool:
    """The answer says what the teacher said, word for word (case and punctuation aside)."""
    return _words(answer) == _words(target)


def claims_kept(answer: str, target: str) -> bool:
    """Every checkable value of the teacher's answer (numbers, names, quotes) is in the answer."""
    have = {c.key for c in claims(_CITATION.sub(" ", answer))}
    return all(c.key in have for c in claims(_CITATION.sub(" ", target)))


@dataclass
class Scores:
    """One model on one set of prompts."""

    n: int = 0
    supported: float = 0.0  # share the support check passes
    f1: float | None = None  # held-out pairs: word F1 against the teacher's answer
    same_form: float | None = None  # ...the teacher's words exactly
    claims_kept: float | None = None  # ...every value of the teacher's answer
    accuracy: float | None = None  # QA files: an accepted answer string in the answer
    check_precision: float | None = None  # ...and the share of supported answers that are right

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items() if v is not None}


def score_pairs(generate: Generate, examples: Sequence[Example]) -> tuple[Scores, list[str]]:
    """A model's answers to the held-out prompts, scored against the teacher's."""
    answers = [generate(e.prompt) for e in examples]
    n = max(1, len(examples))
    pairs = list(zip(examples, answers))
    out = Scores(
        n=len(examples),
        supported=sum(check_answer(e.question, a, e.evidence.ranked, [h.text for h in e.hits]).supported
                      for e, a in pairs) / n,
        f1=sum(token_f1(a, e.target) for e, a in pairs) / n,
        same_form=sum(same_form(a, e.target) for e, a in pairs) / n,
        claims_kept=sum(claims_kept(a, e.target) for e, a in pairs) / n,
    )
    return out, answers


@dataclass(frozen=True)
class QAItem:
    """A grounded question of a QA file, with its small-tier prompt already built."""

    question: str
    accepted: tuple[str, ...]
    prompt: str
    check: Callable[[str], bool]  # the support check against this question's sources


def _accepted(answer: str, accepted: Iterable[str]) -> bool:
    text = " ".join(answer.lower().split())
    return any(" ".join(a.lower().split()) in text for a in accepted)


def score_qa(generate: Generate, items: Sequence[QAItem]) -> tuple[Scores, list[str]]:
    """A model's answers to a QA file's grounded questions: accepted-string accuracy and the check."""
    answers = [generate(item.prompt) for item in items]
    right = [_accepted(a, i.accepted) for i, a in zip(items, answers)]
    supported = [i.check(a) for i, a in zip(items, answers)]
    n, passed = max(1, len(items)), sum(supported)
    out = Scores(n=len(items), accuracy=sum(right) / n, supported=passed / n,
                 check_precision=sum(r and s for r, s in zip(right, supported)) / passed if passed else None)
    return out, answers


class Generator:
    """Greedy answers from the small model, with or without an adapter (llama.cpp, as served)."""

    def __init__(self, model_path: Path, adapter: Path | None, n_ctx: int, max_tokens: int, threads: int) -> None:
        from smallfirst.service.llm.loading import load_llama

        self._llama = load_llama(model_path, n_ctx, threads, lora_path=adapter)
        self._max_tokens = max_tokens

    def __call__(self, prompt: str) -> str:
        self._llama.reset()
        out = self._llama.create_completion(prompt, max_tokens=self._max_tokens, temperature=0.0,
                                            stop=list(ANSWER_STOPS))
        return str(out["choices"][0]["text"]).strip()

    def close(self) -> None:
        self._llama.close()


def _precision(scores: Scores) -> float:
    """The check's precision; with no answer passing it, nothing wrong was passed either."""
    return 1.0 if scores.check_precision is None else scores.check_precision


def verdict(base: dict[str, Scores], tuned: dict[str, Scores]) -> tuple[bool, str]:
    """Keep the adapter only if it answers the held-out pairs more like the teacher (word F1)
    than the base model does, and loses neither accuracy nor the support check's precision on
    any QA file: an adapter whose wrong answers pass the check would cost trust, not just points."""
    b, t = base["held_out"], tuned["held_out"]
    worse = [] if (t.f1 or 0.0) > (b.f1 or 0.0) else [f"held-out F1 {t.f1 or 0.0:.3f}, base {b.f1 or 0.0:.3f}"]
    for name, b in base.items():
        t = tuned[name]
        if b.accuracy is not None and t.accuracy is not None and t.accuracy < b.accuracy:
            worse.append(f"{name} accuracy {t.accuracy:.3f} < base {b.accuracy:.3f}")
        if b.accuracy is not None and _precision(t) < _precision(b):
            worse.append(f"{name} check precision {_precision(t):.3f} < base {_precision(b):.3f}")
    if worse:
        return False, "no better than the base model: " + "; ".join(worse)
    return True, "closer to the teacher than the base model, and no QA accuracy or check precision lost"
