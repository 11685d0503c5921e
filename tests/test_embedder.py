"""The int8 ONNX embedder against sentence-transformers on torch, on real text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smallfirst.retrieval.embedder import Embedder, bundled_model_dir
from smallfirst.retrieval.onnx_export import INT8_FILE, int8_model, model_key

pytestmark = pytest.mark.slow  # every test here loads the embedding model

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "When does the lighthouse museum close?", "How do I ingest a folder while the service runs?",
    "What is the default port?", "How many autocomplete slots are there by default?", "Who painted the Mona Lisa?",
]


def passages() -> list[str]:
    texts = []
    for path in sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "tests" / "fixtures" / "docs").glob("*")):
        text = path.read_text(errors="replace")
        texts += [text[i:i + 900] for i in range(0, len(text), 900)]
    return texts[:120]


@pytest.fixture(scope="module")
def torch_embedder() -> Embedder:
    return Embedder(cache_size=8, backend="torch")


def test_int8_vectors_match_the_float_model(embedder: Embedder, torch_embedder: Embedder) -> None:
    assert embedder.backend == "onnx" and embedder.dimension == torch_embedder.dimension == 384
    texts = passages() + QUESTIONS
    int8, reference = embedder.embed_documents(texts), torch_embedder.embed_documents(texts)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)
    cosine = (int8 * reference).sum(axis=1)
    # With transformers 5.25 and sentence-transformers 6.3 (torch 2.13, onnxruntime 1.31 or 1.32),
    # two of the 58 texts score 0.9888 and 0.989; the mean stays above 0.99.
    assert cosine.min() >= 0.985 and cosine.mean() >= 0.99, f"{int(np.argmin(cosine))}: {cosine.min():.4f}, mean {cosine.mean():.4f}"
    # Each question's nearest passage under the float model is among its three nearest under int8
    # (near ties may swap places, which is why this is not an equality of the first place).
    docs_int8, docs_ref = int8[: -len(QUESTIONS)], reference[: -len(QUESTIONS)]
    top3 = np.argsort(-(int8[-len(QUESTIONS):] @ docs_int8.T), axis=1)[:, :3]
    best = np.argmax(reference[-len(QUESTIONS):] @ docs_ref.T, axis=1)
    assert all(b in row for b, row in zip(best, top3))


def test_batches_of_mixed_lengths_give_each_text_its_own_vector(embedder: Embedder) -> None:
    texts = ["short", "a much longer text about the lighthouse museum and its opening hours " * 12, "mid length text"]
    together = embedder.embed_documents(texts, batch_size=3)
    alone = np.stack([embedder.embed_documents([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-4)


def test_token_counts_are_not_truncated(embedder: Embedder, torch_embedder: Embedder) -> None:
    long = "lighthouse " * 600
    assert embedder.count_tokens(long) == torch_embedder.count_tokens(long) > embedder.max_tokens


def test_the_export_is_made_once_and_keyed_by_the_model(tmp_path: Path) -> None:
    model = bundled_model_dir()
    first = int8_model(model, tmp_path)
    made = (first / INT8_FILE).stat().st_mtime_ns
    assert int8_model(model, tmp_path) == first and (first / INT8_FILE).stat().st_mtime_ns == made
    assert first.name == model_key(model) and not list(tmp_path.glob(".*-*"))  # no scratch folder left
    embedder = Embedder(model, cache_size=4, cache_root=tmp_path)
    assert embedder.embed_query("hello").shape == (384,)


def test_the_cache_answers_repeated_queries_without_the_model(embedder: Embedder) -> None:
    assert embedder.cached("a question never asked before?") is None
    vector = embedder.embed_query("a question   never asked before?")
    assert embedder.cached("a question never asked before?") is vector
