"""Retrain the hard-query classifier and print its held-out accuracy.

    python -m smallfirst.retrieval.train_classifier [--data retrieval/data/hard_queries.jsonl] [--seed 0]

Holds out a stratified quarter of the examples, reports accuracy, precision and recall of the
"hard" label on it, then fits on all examples and writes ``retrieval/data/hard_query_model.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson

from smallfirst.retrieval.classifier import MODEL_FILE, TRAINING_FILE, train
from smallfirst.retrieval.embedder import Embedder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=TRAINING_FILE)
    parser.add_argument("--out", type=Path, default=MODEL_FILE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [orjson.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    labels = np.array([1 if r["label"] == "hard" else 0 for r in rows])
    vectors = Embedder(cache_size=1).embed_documents(texts)
    rng = np.random.default_rng(args.seed)
    held = np.zeros(len(rows), dtype=bool)
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        held[rng.choice(idx, size=len(idx) // 4, replace=False)] = True
    model = train(vectors[~held], labels[~held])
    predicted = np.array([model.probability(v) >= 0.5 for v in vectors[held]])
    truth = labels[held].astype(bool)
    accuracy = float((predicted == truth).mean())
    precision = float((predicted & truth).sum() / max(1, predicted.sum()))
    recall = float((predicted & truth).sum() / max(1, truth.sum()))
    final = train(vectors, labels)
    final.save(args.out, examples=len(rows), held_out_accuracy=round(accuracy, 4),
               held_out_precision=round(precision, 4), held_out_recall=round(recall, 4))
    print(f"examples={len(rows)} held_out={int(held.sum())} held_out_accuracy={accuracy:.3f} "
          f"precision={precision:.3f} recall={recall:.3f} written={args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
