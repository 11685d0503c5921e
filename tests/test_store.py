"""The store interface, the same tests over both search paths of the embedded store: qdrant-client's
own search, and the exact matrix index in front of it. Both run on a real local Qdrant folder."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from smallfirst.retrieval.exact_index import ExactIndex
from smallfirst.retrieval.store import ChunkPoint, VectorStore, open_local_client

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def chunk(doc: str, version: str, i: int, vector: np.ndarray) -> ChunkPoint:
    return ChunkPoint(doc_id=doc, doc_version=version, chunk_index=i, chunk_count=3, title=doc, uri=f"{doc}.md",
                      text=f"{doc} {version} {i}", vector=vector.tolist())


@pytest.fixture(params=["qdrant-client search", "exact index"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    client = open_local_client(tmp_path / "qdrant")
    s = VectorStore(client, "docs", DIM, indexes={} if request.param == "exact index" else None)
    s.ensure_collection()
    yield s
    s.close()


def test_search_ranks_by_cosine_and_carries_the_payload(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 30)
    store.upsert(chunk(f"d{i // 3}", "v1", i % 3, vectors[i]) for i in range(30))
    query = vectors[7] + 0.05 * unit(rng, 1)[0]
    hits = store.search(query, 5)
    expected = np.argsort(-(vectors @ (query / np.linalg.norm(query))))[:5]
    assert [h.text for h in hits] == [f"d{i // 3} v1 {i % 3}" for i in expected]
    assert hits[0].doc_id == "d2" and hits[0].chunk_index == 1 and hits[0].uri == "d2.md"
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert hits[0].score == pytest.approx(float(vectors[7] @ (query / np.linalg.norm(query))), abs=1e-4)


def test_copies_of_a_chunk_do_not_crowd_out_other_text(store: VectorStore) -> None:
    """The same page ingested under ten roots: a search gives each text once, and still top_k of them."""
    rng = np.random.default_rng(3)
    vectors = unit(rng, 4)
    store.upsert([ChunkPoint(doc_id=f"root{root}/page", doc_version="v1", chunk_index=0, chunk_count=1, title="page",
                             uri=f"root{root}/page.md", text="the  same\ntext", vector=vectors[0].tolist())
                  for root in range(10)])
    near = [(vectors[0] + 0.3 * vectors[i]) / np.linalg.norm(vectors[0] + 0.3 * vectors[i]) for i in (1, 2, 3)]
    store.upsert(chunk(f"d{i}", "v1", 0, vector) for i, vector in zip((1, 2, 3), near))
    hits = store.search(vectors[0], 4)
    assert [" ".join(h.text.split()) for h in hits][0] == "the same text"
    assert sorted(h.text for h in hits[1:]) == ["d1 v1 0", "d2 v1 0", "d3 v1 0"]


def test_replacing_a_version_and_deleting_a_document(store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    old, new, other = unit(rng, 3), unit(rng, 3), unit(rng, 3)
    store.upsert(chunk("a", "v1", i, old[i]) for i in range(3))
    store.upsert(chunk("b", "v1", i, other[i]) for i in range(3))
    store.upsert(chunk("a", "v2", i, new[i]) for i in range(3))
    store.delete_doc("a", keep_version="v2")
    assert store.count() == 6
    assert {h.doc_version for h in store.search(old[0], 6) if h.doc_id == "a"} == {"v2"}
    store.delete_doc("a")
    assert store.count() == 3 and {h.doc_id for h in store.search(new[0], 6)} == {"b"}
    store.upsert([chunk("b", "v1", 0, new[0])])  # the same point again, with another vector: replaced
    assert store.count() == 3 and store.search(new[0], 1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_top_scores_and_an_empty_collection(store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    queries = unit(rng, 4)
    assert store.top_scores(queries) == [0.0] * 4 and store.search(queries[0], 3) == []
    vectors = unit(rng, 10)
    store.upsert(chunk("d", "v", i, vectors[i]) for i in range(10))
    best = (queries @ vectors.T).max(axis=1)
    assert store.top_scores(queries) == pytest.approx(best.tolist(), abs=1e-4)


def test_what_was_written_is_found_after_reopening(tmp_path: Path) -> None:
    """The index is rebuilt from the store at open: the store is the durable copy."""
    rng = np.random.default_rng(4)
    vectors = unit(rng, 5)
    first = VectorStore.open("docs", DIM, path=tmp_path / "qdrant")
    first.upsert(chunk("d", "v", i, vectors[i]) for i in range(5))
    first.delete_doc("d", keep_version="v")  # keeps everything
    first.close()
    again = VectorStore.open("docs", DIM, path=tmp_path / "qdrant")
    try:
        assert [h.chunk_index for h in again.search(vectors[3], 1)] == [3] and again.count() == 5
        other = again.with_collection("notes")
        other.ensure_collection()
        other.upsert([chunk("n", "v", 0, vectors[0])])
        assert [h.doc_id for h in other.search(vectors[0], 5)] == ["n"]  # collections stay apart
        assert len(again.search(vectors[0], 5)) == 5
    finally:
        again.close()


def test_exact_index_reuses_removed_rows_and_grows() -> None:
    rng = np.random.default_rng(5)
    index = ExactIndex(DIM)
    vectors = unit(rng, 3000)
    index.add((f"p{i}", f"d{i % 7}", "v", vectors[i]) for i in range(3000))
    index.remove([f"p{i}" for i in range(0, 3000, 2)])
    assert len(index) == 1500
    assert index.search(vectors[3], 1)[0][0] == "p3" and index.search(vectors[2], 1)[0][0] != "p2"
    assert all(int(pid[1:]) % 2 == 1 for pid, _ in index.search(vectors[0], 50))
    index.add([("q", "x", "v", vectors[0])])
    assert index.search(vectors[0], 1) == [("q", pytest.approx(1.0, abs=1e-5))]
    assert set(index.doc_points("d0")) == {f"p{i}" for i in range(1, 3000, 2) if i % 7 == 0}
    assert set(index.doc_points("x")) == {"q"} and index.doc_points("x", except_version="v") == []


def phrase_chunk(doc: str, text: str, vector: np.ndarray, i: int = 0) -> ChunkPoint:
    return ChunkPoint(doc_id=doc, doc_version="v1", chunk_index=i, chunk_count=1, title=doc, uri=f"{doc}.md",
                      text=text, vector=vector.tolist())


def test_a_phrase_finds_the_chunks_holding_its_last_words(store: VectorStore) -> None:
    """Words as written, case and punctuation aside; too few words find nothing."""
    vectors = unit(np.random.default_rng(5), 3)
    store.upsert([phrase_chunk("kite", "A delta kite flies best in steady winds.", vectors[0]),
                  phrase_chunk("boat", "The boat's sail flies, BEST in steady, gusty weather.", vectors[1]),
                  phrase_chunk("soup", "Simmer the soup for an hour.", vectors[2])])
    assert sorted(h.doc_id for h in store.phrase_hits("my old kite flies best in", 8)) == ["boat", "kite"]
    assert [h.doc_id for h in store.phrase_hits("they say: simmer the SOUP", 8)] == ["soup"]
    assert store.phrase_hits("the soup is cold", 8) == []
    assert store.phrase_hits("the soup", 8) == []


def test_of_many_chunks_holding_a_phrase_those_holding_more_of_it_come_first(store: VectorStore) -> None:
    vectors = unit(np.random.default_rng(6), 12)
    store.upsert(phrase_chunk(f"d{i}", f"Note {i}: the lazy brown fox sleeps.", vectors[i]) for i in range(11))
    store.upsert([phrase_chunk("only", "Only this one says the lazy brown fox jumps.", vectors[11])])
    assert len(store.phrase_hits("the lazy brown fox", 20)) == 12
    assert [h.doc_id for h in store.phrase_hits("and only this one says the lazy brown fox", 1)] == ["only"]


def test_a_replaced_or_deleted_chunk_is_no_longer_found_by_its_words(store: VectorStore, tmp_path: Path) -> None:
    vectors = unit(np.random.default_rng(7), 2)
    store.upsert([phrase_chunk("a", "The red lamp burns all night.", vectors[0])])
    store.upsert([phrase_chunk("a", "The green lamp burns until dawn.", vectors[0])])  # the same point, new text
    store.upsert([phrase_chunk("b", "A red lamp burns all night long.", vectors[1])])
    assert [h.doc_id for h in store.phrase_hits("red lamp burns", 8)] == ["b"]
    store.upsert([phrase_chunk("c", "Her red lamp burns on.", vectors[1])])
    store.delete_doc("b")
    assert [h.doc_id for h in store.phrase_hits("red lamp burns", 1)] == ["c"]  # the deleted one takes no place
    store.delete_doc("c")
    assert store.phrase_hits("red lamp burns", 8) == []
    assert [h.doc_id for h in store.phrase_hits("green lamp burns", 8)] == ["a"]


def test_the_phrase_index_is_rebuilt_from_the_store_at_open(tmp_path: Path) -> None:
    vectors = unit(np.random.default_rng(8), 1)
    store = VectorStore.open("docs", DIM, path=tmp_path / "qdrant")
    store.upsert([phrase_chunk("kite", "A delta kite flies best in steady winds.", vectors[0])])
    store.close()
    reopened = VectorStore.open("docs", DIM, path=tmp_path / "qdrant")
    try:
        assert [h.doc_id for h in reopened.phrase_hits("a delta kite flies", 8)] == ["kite"]
    finally:
        reopened.close()


def test_the_phrase_index_forgets_replaced_text_and_stays_bounded() -> None:
    from smallfirst.retrieval.phrase_index import PhraseIndex

    index = PhraseIndex()
    for round_ in range(50):  # one chunk rewritten fifty times, looked up after each
        index.add([("p", f"version {round_} of the harbour notes"), ("q", "the harbour notes stay")])
        assert index.find("of the harbour notes", 1) == ["p"] and index.find(f"version {round_} of", 8) == ["p"]
    assert len(index) == 2 and len(index._points) <= 4  # forgotten chunks are dropped once they are the majority
    assert index.find("version 3 of", 8) == []
