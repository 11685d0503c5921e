"""The grounding threshold calibrated on a freshly ingested corpus, with no labels (real embedder and store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smallfirst.ingest.sync import ChunkingOptions, sync_folder
from smallfirst.retrieval.grounding_threshold import calibrate, offtopic_questions, pseudo_questions
from smallfirst.settings import Settings
from smallfirst.retrieval.store import VectorStore
from tests.conftest import FIXTURE_DOCS

ROOT = Path(__file__).resolve().parent.parent


def calibrated(folder: Path, tmp_path: Path, embedder, labelled: list[str] = ()) -> tuple:
    """(the calibration of ``folder``, the top scores of ``labelled`` questions against it)."""
    store = VectorStore.open("calib", embedder.dimension, path=tmp_path / "store")
    try:
        sync_folder(folder, store, embedder.embed_documents, embedder.count_tokens, ChunkingOptions.from_settings(Settings.load({})))
        questions = pseudo_questions(store.sample_texts(300), 120)
        found = calibrate(store.top_scores(embedder.embed_documents(offtopic_questions())),
                          store.top_scores(embedder.embed_documents(questions)))
        return found, store.top_scores(embedder.embed_documents(list(labelled))) if labelled else []
    finally:
        store.close()


def test_offtopic_bank_is_large_and_varied() -> None:
    rows = [json.loads(line) for line in (ROOT / "retrieval" / "data" / "offtopic_questions.jsonl").read_text().splitlines()]
    assert len(rows) >= 200 and len({r["domain"] for r in rows}) >= 10


@pytest.mark.slow
def test_auto_threshold_separates_the_offtopic_bank_from_the_corpus_own_questions(tmp_path: Path, embedder) -> None:
    found, _ = calibrated(FIXTURE_DOCS, tmp_path, embedder)
    below = sum(s < found.threshold for s in found.ungrounded) / len(found.ungrounded)
    above = sum(s >= found.threshold for s in found.grounded) / len(found.grounded)
    assert below >= 0.98 and above >= 0.75, found.as_dict()


@pytest.mark.slow
def test_auto_threshold_routes_the_labelled_questions_of_the_bundled_docs(tmp_path: Path, embedder) -> None:
    """Calibrated with no labels, the threshold still puts the labelled questions on the right side."""
    rows = [json.loads(line) for line in (ROOT / "retrieval" / "data" / "grounding_calibration.jsonl").read_text().splitlines()]
    found, scores = calibrated(ROOT / "docs", tmp_path, embedder, [r["question"] for r in rows])
    right = sum((s >= found.threshold) == bool(r["grounded"]) for s, r in zip(scores, rows))
    assert found.margin > 0 and right / len(rows) >= 0.95, (found.as_dict(), right)
