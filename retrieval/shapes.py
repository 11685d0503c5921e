"""What shape of answer a question asks for: a value, a name, a description, yes or no, or a count.

A multinomial logistic regression over the query's embedding (already computed for the search),
scaled by ``EMBEDDING_WEIGHT``, and the question's words: each of its first three words at its
position, and every word and every pair of neighbouring words anywhere in it, each as one of those
seen often enough in training. Fitted on the ``dev`` QA sets by
``python bench/train_answer_models.py``, with classes weighted to balance (a corpus's own mix of
shapes should not become the model's prior); its weights ship in
``retrieval/data/question_shape_model.json``. No word list decides a shape: the model learns which
openings, words and meanings go with which shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson

DATA_DIR = Path(__file__).resolve().parent / "data"
SHAPE_MODEL_FILE = DATA_DIR / "question_shape_model.json"
SHAPES = ("value", "name", "description", "yesno", "count")
OPENING_WORDS = 3  # the first words of a question that are features of their own, at their position
EMBEDDING_WEIGHT = 0.5  # the embedding's scale beside the 0/1 word features (chosen on dev, held-out corpus)

_WORD = re.compile(r"[a-z']+")


def question_words(question: str) -> list[str]:
    """The question's words, lower case ("what's" stays one word)."""
    return _WORD.findall(question.lower())


def word_features(question: str) -> list[list[str]]:
    """The question's word features by group: each opening position, then its words, then its word pairs."""
    words = question_words(question)
    groups = [[words[p]] if p < len(words) else [] for p in range(OPENING_WORDS)]
    groups.append(sorted(set(words)))
    groups.append(sorted({f"{a} {b}" for a, b in zip(words, words[1:])}))
    return groups


def features(vector: np.ndarray, question: str, vocabularies: Sequence[Sequence[str]]) -> np.ndarray:
    """The scaled embedding, then one indicator per known word feature of each group (an unknown one sets none)."""
    parts = [EMBEDDING_WEIGHT * np.asarray(vector, dtype=np.float64)]
    for present, vocabulary in zip(word_features(question), vocabularies):
        known = set(present)
        parts.append(np.array([float(word in known) for word in vocabulary]))
    return np.concatenate(parts)


@dataclass(frozen=True)
class ShapeModel:
    """p(shape | question) = softmax(W · features + b)."""

    classes: tuple[str, ...]
    vocabularies: tuple[tuple[str, ...], ...]
    weights: np.ndarray  # (classes, features)
    bias: np.ndarray  # (classes,)

    def probabilities(self, vector: np.ndarray, question: str) -> dict[str, float]:
        z = self.weights @ features(vector, question, [list(v) for v in self.vocabularies]) + self.bias
        p = np.exp(z - z.max())
        p /= p.sum()
        return {shape: float(x) for shape, x in zip(self.classes, p)}

    def shape(self, vector: np.ndarray, question: str) -> tuple[str, float]:
        """The likeliest shape and its probability."""
        probabilities = self.probabilities(vector, question)
        best = max(probabilities, key=lambda s: probabilities[s])
        return best, probabilities[best]

    @classmethod
    def load(cls, path: Path = SHAPE_MODEL_FILE) -> "ShapeModel":
        data = orjson.loads(path.read_bytes())
        if len(data["vocabularies"]) != len(word_features("")):
            raise ValueError(f"{path}: fitted on other features; refit with bench/train_answer_models.py")
        return cls(tuple(data["classes"]), tuple(tuple(v) for v in data["vocabularies"]),
                   np.asarray(data["weights"], dtype=np.float64), np.asarray(data["bias"], dtype=np.float64))

    def to_json(self, **meta: object) -> bytes:
        return orjson.dumps({
            "classes": list(self.classes), "vocabularies": [list(v) for v in self.vocabularies],
            "weights": [[round(float(w), 6) for w in row] for row in self.weights],
            "bias": [round(float(b), 6) for b in self.bias], **meta,
        })
