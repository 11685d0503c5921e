"""What shape of answer a question asks for: a value, a name, a description, yes or no, or a count.

A multinomial logistic regression over the query's embedding (already computed for the search)
and its first two words, each as one of the words seen often enough in training. Fitted on the
``dev`` QA sets by ``python bench/train_answer_models.py``; its weights ship in
``retrieval/data/question_shape_model.json``. No word list decides a shape: the model learns
which openings and which meanings go with which shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

DATA_DIR = Path(__file__).resolve().parent / "data"
SHAPE_MODEL_FILE = DATA_DIR / "question_shape_model.json"
SHAPES = ("value", "name", "description", "yesno", "count")
OPENING_WORDS = 2  # the first words of a question that are features of their own

_WORD = re.compile(r"[a-z']+")


def opening(question: str) -> list[str]:
    """The question's first words, lower case ("what's" stays one word)."""
    return _WORD.findall(question.lower())[:OPENING_WORDS]


def features(vector: np.ndarray, question: str, vocabularies: list[list[str]]) -> np.ndarray:
    """The embedding, then one indicator per known word at each opening position (an unknown word sets none)."""
    words = opening(question)
    parts = [np.asarray(vector, dtype=np.float64)]
    for position, vocabulary in enumerate(vocabularies):
        indicator = np.zeros(len(vocabulary))
        if position < len(words) and words[position] in vocabulary:
            indicator[vocabulary.index(words[position])] = 1.0
        parts.append(indicator)
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
        return cls(tuple(data["classes"]), tuple(tuple(v) for v in data["vocabularies"]),
                   np.asarray(data["weights"], dtype=np.float64), np.asarray(data["bias"], dtype=np.float64))

    def to_json(self, **meta: object) -> bytes:
        return orjson.dumps({
            "classes": list(self.classes), "vocabularies": [list(v) for v in self.vocabularies],
            "weights": [[round(float(w), 6) for w in row] for row in self.weights],
            "bias": [round(float(b), 6) for b in self.bias], **meta,
        })
