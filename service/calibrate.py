"""``smallfirst calibrate``: choose the grounding threshold from labelled questions.

Ingests a document folder into a temporary embedded store, retrieves for every labelled
question, and picks the top-score threshold that best separates questions the documents
answer from those they do not (highest balanced accuracy; ties go to the middle of the gap).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import orjson

from ingest.sync import ChunkingOptions, sync_folder
from retrieval.embedder import Embedder
from retrieval.settings import Settings, SettingsError, add_arguments, from_args
from retrieval.store import VectorStore

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "retrieval" / "data" / "grounding_calibration.jsonl"


def best_threshold(scores: list[tuple[float, bool]]) -> tuple[float, float]:
    """(threshold, balanced accuracy): grounded when the top score is at least the threshold."""
    positives = sum(1 for _, g in scores if g) or 1
    negatives = sum(1 for _, g in scores if not g) or 1
    values = sorted({s for s, _ in scores})
    candidates = [values[0] - 1e-3] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1e-3]
    best = (0.0, -1.0)
    for t in candidates:
        tpr = sum(1 for s, g in scores if g and s >= t) / positives
        tnr = sum(1 for s, g in scores if not g and s < t) / negatives
        accuracy = (tpr + tnr) / 2
        if accuracy > best[1]:
            best = (t, accuracy)
    return best


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("folder", type=Path, help="Document folder the questions are about.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help='JSONL of {"question": ..., "grounded": true|false}.')
    add_arguments(parser, ("embed_model", "chunk_tokens", "chunk_overlap_tokens", "max_file_mb", "top_k"))
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        settings: Settings = from_args(args)
        rows = [orjson.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    except (SettingsError, OSError, orjson.JSONDecodeError) as exc:
        print(f"smallfirst calibrate: {exc}", file=sys.stderr)
        return 2
    embedder = Embedder(settings.embed_model)
    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore.open("calibration", embedder.dimension, path=Path(tmp))
        try:
            sync_folder(args.folder, store, embedder.embed_documents, embedder.count_tokens,
                        ChunkingOptions.from_settings(settings))
            scores = []
            for row in rows:
                hits = store.search(embedder.embed_query(row["question"]), settings.top_k)
                scores.append((hits[0].score if hits else 0.0, bool(row["grounded"])))
        finally:
            store.close()
    threshold, accuracy = best_threshold(scores)
    grounded = sorted(s for s, g in scores if g)
    ungrounded = sorted(s for s, g in scores if not g)
    print(f"grounded top scores:   min {grounded[0]:.3f} median {grounded[len(grounded) // 2]:.3f}")
    print(f"ungrounded top scores: max {ungrounded[-1]:.3f} median {ungrounded[len(ungrounded) // 2]:.3f}")
    print(f"questions={len(scores)} grounding_threshold={threshold:.3f} balanced_accuracy={accuracy:.3f}")
    return 0
