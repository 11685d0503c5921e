"""A grounding threshold calibrated on the collection itself, with no labelled questions.

Two distributions of top retrieval scores are compared:

* ungrounded: a shipped bank of off-topic questions from many domains (general knowledge,
  maths, chit-chat, trades far from software), which no documentation collection answers;
* grounded: pseudo-questions made from the collection's own sentences and headings (a few of
  a sentence's content words, in order; "What is <heading>?"), the way users ask about them.

The threshold sits a quarter of the way from the ungrounded side's 99th percentile to the
grounded side's 10th: real questions score lower than pseudo-questions made from the very
text they match, so the threshold leans toward the off-topic side. Where the two overlap a
little (a small collection), it sits at that 99th percentile while three quarters of the
pseudo-questions stay above it; beyond that, at the threshold with the best balanced accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson

from smallfirst.retrieval.evidence import STOPWORDS, split_sentences

OFFTOPIC_FILE = Path(__file__).resolve().parent / "data" / "offtopic_questions.jsonl"
UNGROUNDED_QUANTILE = 0.99
GROUNDED_QUANTILE = 0.10
LEAN = 0.25  # where between the two quantiles the threshold sits (0: at the off-topic side)
KEEP_GROUNDED = 0.75  # on overlap, the off-topic side's quantile still wins while it keeps this share of pseudo-questions


def offtopic_questions(path: Path = OFFTOPIC_FILE) -> list[str]:
    """The shipped off-topic question bank."""
    return [orjson.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _topic(text: str) -> str:
    """The chunk's document title: the first part of its heading trail, or its first heading."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first.split(" › ")[0].lstrip("#").strip() if (" › " in first or first.startswith("#")) else ""


def pseudo_questions(texts: Sequence[str], count: int, seed: int = 0) -> list[str]:
    """Questions made from chunk texts, phrased the way users ask: a section asked about under its
    document's title, or two thirds of a sentence's content words (in order) with that title."""
    rng = random.Random(seed)
    from_sentences: list[str] = []
    from_headings: set[str] = set()
    for text in texts:
        topic = _topic(text)
        for sentence in split_sentences(text):
            if sentence.label:
                section = sentence.label.split(" › ")[-1].strip()
                if section and section != topic and len(section) <= 80:
                    from_headings.add(f"What about {section.lower()} in {topic}?" if topic else f"What is {section}?")
            kept = [w for w in sentence.text.split() if w.lower().strip(".,:;()`'\"") not in STOPWORDS]
            if len(kept) >= 5:
                size = max(4, (2 * len(kept)) // 3)
                start = rng.randrange(0, len(kept) - size + 1)
                phrase = " ".join(kept[start:start + size]).strip(".,:;")
                prefix = f"{topic}: " if topic and topic.lower() not in phrase.lower() else ""
                from_sentences.append(f"{prefix}{phrase}?")
    headings = sorted(from_headings)
    rng.shuffle(from_sentences)
    rng.shuffle(headings)
    part = min(len(headings), count // 3)
    return headings[:part] + from_sentences[:count - part]


@dataclass(frozen=True)
class Calibration:
    """A collection's grounding threshold and the evidence for it."""

    threshold: float
    margin: float  # grounded 10th percentile minus ungrounded 99th: how clear the separation is
    ungrounded: tuple[float, ...]
    grounded: tuple[float, ...]
    source: str = "auto"  # auto | setting | default

    def as_dict(self) -> dict[str, object]:
        def q(values: tuple[float, ...], p: float) -> float | None:
            return round(float(np.quantile(values, p)), 4) if values else None

        return {
            "threshold": round(self.threshold, 4), "margin": round(self.margin, 4), "source": self.source,
            "ungrounded": {"n": len(self.ungrounded), "p50": q(self.ungrounded, 0.5), "p99": q(self.ungrounded, UNGROUNDED_QUANTILE),
                           "max": q(self.ungrounded, 1.0)},
            "grounded": {"n": len(self.grounded), "min": q(self.grounded, 0.0), "p10": q(self.grounded, GROUNDED_QUANTILE),
                         "p50": q(self.grounded, 0.5)},
        }


def best_threshold(scores: Sequence[tuple[float, bool]]) -> tuple[float, float]:
    """(threshold, balanced accuracy): grounded when the top score is at least the threshold;
    among equally good thresholds the middle of the widest gap wins."""
    positives = sum(1 for _, g in scores if g) or 1
    negatives = sum(1 for _, g in scores if not g) or 1
    values = sorted({s for s, _ in scores})
    candidates = [values[0] - 1e-3] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-3]
    best = (0.0, -1.0)
    for t in candidates:
        tpr = sum(1 for s, g in scores if g and s >= t) / positives
        tnr = sum(1 for s, g in scores if not g and s < t) / negatives
        accuracy = (tpr + tnr) / 2
        if accuracy > best[1] + 1e-12:
            best = (t, accuracy)
    return best


def calibrate(ungrounded: Sequence[float], grounded: Sequence[float]) -> Calibration:
    """The threshold from the two top-score distributions."""
    if not ungrounded or not grounded:
        raise ValueError("calibration needs both off-topic and pseudo-question scores")
    low = float(np.quantile(ungrounded, UNGROUNDED_QUANTILE))
    high = float(np.quantile(grounded, GROUNDED_QUANTILE))
    margin = high - low
    if margin > 0:
        threshold = low + LEAN * margin
    elif sum(1 for s in grounded if s >= low) >= KEEP_GROUNDED * len(grounded):
        threshold = low  # a small overlap: keep the off-topic questions out, most pseudo-questions stay in
    else:
        threshold, _ = best_threshold([(s, False) for s in ungrounded] + [(s, True) for s in grounded])
    return Calibration(threshold, margin, tuple(sorted(ungrounded)), tuple(sorted(grounded)))
