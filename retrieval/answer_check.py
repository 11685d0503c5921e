"""The pick model: which span of the evidence answers the question, and how sure that is.

The small tier picks its answer among candidate spans of the evidence
(:mod:`~smallfirst.retrieval.picking`). A logistic regression over each candidate's features
(the small model's score of it and its rank among the options, where its sentence ranks, how much
of the question the sentence holds, how near the span stands to the question's words and where in
its sentence, how often the best sentences repeat it, the span's kind, the retrieval scores, the
rule-based check's verdict) gives the probability that the
candidate is right. The likeliest candidate is the answer; it is marked supported when its
probability reaches the threshold chosen on the ``dev`` QA sets, where answers scored by a
model fitted without their own corpus are right at ``PRECISION`` (``bench/train_answer_models.py``) or better.
A choice among two or more candidates is never marked supported, whatever its confidence, for
a shape whose held-out choices on dev are not shown to beat blind picks among the same
candidates (yes or no, and a count, on the shipped data): the check cannot vouch for a coin flip.

Fitted by ``python bench/train_answer_models.py`` on candidates of the dev sets
(``retrieval/data/pick_examples.jsonl``); the weights ship in ``retrieval/data/pick_model.json``.
A written answer (no candidate fitted the question) is checked by the rules alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import orjson

from smallfirst.retrieval.picking import CANDIDATE_FEATURES

DATA_DIR = Path(__file__).resolve().parent / "data"
PICK_MODEL_FILE = DATA_DIR / "pick_model.json"


@dataclass(frozen=True)
class Pick:
    """The chosen candidate, its probability of being right, and whether that makes it supported."""

    index: int
    confidence: float | None  # None without a fitted model (the small model's likeliest is chosen); 0 for a choice it cannot vouch for
    supported: bool
    vouched: bool = True  # False for a choice of a shape the model cannot vouch for


@dataclass(frozen=True)
class PickModel:
    """p(right | candidate features) = sigmoid(w · standardised features + b); supported at
    ``threshold``, except for a choice among several candidates of a shape in ``unsupported_shapes``."""

    weights: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    threshold: float
    unsupported_shapes: frozenset[str] = frozenset()

    def probability(self, features: Mapping[str, float]) -> float:
        x = (np.array([features[name] for name in CANDIDATE_FEATURES], dtype=np.float64) - self.mean) / self.scale
        return float(1.0 / (1.0 + math.exp(-float(np.clip(x @ self.weights + self.bias, -40, 40)))))

    @classmethod
    def load(cls, path: Path = PICK_MODEL_FILE) -> "PickModel":
        data = orjson.loads(path.read_bytes())
        if list(data["features"]) != list(CANDIDATE_FEATURES):
            raise ValueError(f"{path}: fitted on other features; refit with bench/train_answer_models.py")
        return cls(np.asarray(data["weights"], dtype=np.float64), float(data["bias"]),
                   np.asarray(data["mean"], dtype=np.float64), np.asarray(data["scale"], dtype=np.float64),
                   float(data["threshold"]), frozenset(data.get("unsupported_shapes", ())))

    def to_json(self, **meta: object) -> bytes:
        return orjson.dumps({
            "features": list(CANDIDATE_FEATURES), "weights": [round(float(w), 6) for w in self.weights],
            "bias": round(self.bias, 6), "mean": [round(float(m), 6) for m in self.mean],
            "scale": [round(float(s), 6) for s in self.scale], "threshold": round(self.threshold, 6),
            "unsupported_shapes": sorted(self.unsupported_shapes), **meta,
        }, option=orjson.OPT_INDENT_2)


def choose(model: PickModel | None, features: Sequence[Mapping[str, float]], lm_scores: Sequence[float],
           rules: Sequence[bool], shape: str | None = None) -> Pick:
    """The answer among the candidates of a question of ``shape``. With the model, the likeliest
    right, supported at its threshold, except for a choice among several candidates of a shape
    whose choices the model cannot vouch for (confidence 0). Without it, the small model's
    likeliest, supported when the rules pass it."""
    if not features:
        raise ValueError("no candidates to choose among")
    if model is None:
        best = max(range(len(lm_scores)), key=lambda i: lm_scores[i])
        return Pick(best, None, bool(rules[best]))
    probabilities = [model.probability(f) for f in features]
    best = max(range(len(probabilities)), key=lambda i: probabilities[i])
    if shape in model.unsupported_shapes and len(features) > 1:
        return Pick(best, 0.0, False, vouched=False)
    return Pick(best, probabilities[best], probabilities[best] >= model.threshold)
