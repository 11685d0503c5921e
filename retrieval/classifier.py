"""The hard-query classifier: logistic regression on the query embedding already computed.

It flags questions a small model handles badly (maths, multi-step reasoning, writing code,
open-ended creative writing) so they can go to the large tier before any small-model token
is spent. Its weights ship in ``retrieval/data/hard_query_model.json``; ``python -m
smallfirst.retrieval.train_classifier`` retrains them from ``retrieval/data/hard_queries.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

DATA_DIR = Path(__file__).resolve().parent / "data"
MODEL_FILE = DATA_DIR / "hard_query_model.json"
TRAINING_FILE = DATA_DIR / "hard_queries.jsonl"


@dataclass(frozen=True)
class HardQueryClassifier:
    """p(hard | query vector) = sigmoid(w · v + b)."""

    weights: np.ndarray
    bias: float

    def probability(self, vector: np.ndarray) -> float:
        z = float(np.dot(self.weights, np.asarray(vector, dtype=np.float32))) + self.bias
        return float(1.0 / (1.0 + np.exp(-z)))

    @classmethod
    def load(cls, path: Path = MODEL_FILE) -> "HardQueryClassifier":
        data = orjson.loads(path.read_bytes())
        return cls(np.asarray(data["weights"], dtype=np.float32), float(data["bias"]))

    def save(self, path: Path = MODEL_FILE, **meta: object) -> None:
        path.write_bytes(orjson.dumps({"weights": [round(float(w), 6) for w in self.weights], "bias": self.bias, **meta}))


def train(vectors: np.ndarray, labels: np.ndarray, l2: float = 1e-3, epochs: int = 2000, rate: float = 0.5) -> HardQueryClassifier:
    """Fit by full-batch gradient descent on the L2-regularised log loss."""
    w = np.zeros(vectors.shape[1], dtype=np.float64)
    b = 0.0
    x = vectors.astype(np.float64)
    y = labels.astype(np.float64)
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        grad = p - y
        w -= rate * (x.T @ grad / len(y) + l2 * w)
        b -= rate * float(grad.mean())
    return HardQueryClassifier(w.astype(np.float32), b)
