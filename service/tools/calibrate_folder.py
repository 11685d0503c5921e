"""``smallfirst calibrate``: the grounding threshold of a document folder, with no labels needed.

Ingests the folder into a temporary embedded store and runs the same calibration as the
service does on each collection (the shipped off-topic bank against pseudo-questions made
from the folder's own text), then prints both top-score distributions, the threshold and its
margin. With ``--data`` (``{"question": ..., "grounded": true|false}`` lines), it also reports
how those labelled questions fall on either side of it, and the best labelled threshold.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from smallfirst.ingest.sync import ChunkingOptions, sync_folder
from smallfirst.retrieval.grounding_threshold import Calibration, best_threshold, calibrate, offtopic_questions, pseudo_questions
from smallfirst.retrieval.embedder import Embedder
from smallfirst.settings import Settings, SettingsError, add_arguments, from_args
from smallfirst.retrieval.store import VectorStore

SAMPLE_CHUNKS = 300


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("folder", type=Path, help="Document folder to calibrate on.")
    parser.add_argument("--data", type=Path, default=None,
                        help='Optional JSONL of labelled questions {"question": ..., "grounded": true|false}.')
    add_arguments(parser, ("embed_model", "chunk_tokens", "chunk_overlap_tokens", "max_file_mb", "calibration_questions"))
    return parser


def histogram(values: tuple[float, ...] | list[float], low: float = 0.0, high: float = 1.0, bins: int = 20) -> str:
    """One line of counts per 0.05-wide score bin."""
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return "\n".join(f"  {edges[i]:.2f}-{edges[i + 1]:.2f} {'#' * int(c)} {int(c) if c else ''}".rstrip()
                     for i, c in enumerate(counts) if c)


def run(args: argparse.Namespace) -> int:
    try:
        settings: Settings = from_args(args)
        rows = [orjson.loads(line) for line in args.data.read_text().splitlines() if line.strip()] if args.data else []
        if not args.folder.is_dir():
            raise OSError(f"not a folder: {args.folder}")
    except (SettingsError, OSError, orjson.JSONDecodeError) as exc:
        print(f"smallfirst calibrate: {exc}", file=sys.stderr)
        return 2
    embedder = Embedder(settings.embed_model, backend=settings.embed_backend, cache_root=settings.embed_cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        store = VectorStore.open("calibration", embedder.dimension, path=Path(tmp))
        try:
            sync_folder(args.folder, store, embedder.embed_documents, embedder.count_tokens,
                        ChunkingOptions.from_settings(settings))
            questions = pseudo_questions(store.sample_texts(SAMPLE_CHUNKS), settings.calibration_questions)
            if not questions:
                print(f"smallfirst calibrate: no text to calibrate on in {args.folder}", file=sys.stderr)
                return 1
            found: Calibration = calibrate(store.top_scores(embedder.embed_documents(offtopic_questions())),
                                           store.top_scores(embedder.embed_documents(questions)))
            labelled = store.top_scores(embedder.embed_documents([r["question"] for r in rows])) if rows else []
        finally:
            store.close()
    report: dict[str, Any] = found.as_dict()
    print(f"ungrounded (off-topic bank, {len(found.ungrounded)} questions): top scores\n{histogram(found.ungrounded)}")
    print(f"grounded (pseudo-questions from the folder, {len(found.grounded)}): top scores\n{histogram(found.grounded)}")
    print(f"ungrounded p50 {report['ungrounded']['p50']} p99 {report['ungrounded']['p99']} max {report['ungrounded']['max']}; "
          f"grounded min {report['grounded']['min']} p10 {report['grounded']['p10']} p50 {report['grounded']['p50']}")
    if rows:
        scores = [(score, bool(r["grounded"])) for score, r in zip(labelled, rows)]
        right = sum(1 for sc, g in scores if (sc >= found.threshold) == g)
        best, accuracy = best_threshold(scores)
        print(f"labelled: {right}/{len(scores)} on the right side of the threshold; "
              f"best labelled threshold {best:.3f} (balanced accuracy {accuracy:.3f})")
    print(f"grounding_threshold={found.threshold:.3f} margin={found.margin:.3f}")
    return 0
