"""Ingest on the real embedder and the real embedded Qdrant: exact, incremental, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from smallfirst.ingest.sync import ChunkingOptions, document_id, sync_folder
from smallfirst.retrieval.store import VectorStore, point_id
from tests.conftest import smallfirst

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path: Path, embedder):
    s = VectorStore.open("docs", embedder.dimension, path=tmp_path / "qdrant")
    yield s
    s.close()


def sync(docs: Path, store: VectorStore, embedder):
    return sync_folder(docs, store, embedder.embed_documents, embedder.count_tokens, ChunkingOptions(60, 10))


def point_ids(store: VectorStore) -> set[str]:
    points, _ = store.client.scroll(store.collection, limit=10_000, with_payload=False)
    return {str(p.id) for p in points}


def test_first_run_adds_every_file_and_rerun_writes_nothing(docs_dir: Path, store: VectorStore, embedder) -> None:
    first = sync(docs_dir, store, embedder)
    assert (first.added, first.changed, first.unchanged, first.removed, first.failed) == (4, 0, 0, 0, [])
    assert first.chunks_written == store.count() > 4
    ids = point_ids(store)
    second = sync(docs_dir, store, embedder)
    assert (second.added, second.changed, second.unchanged, second.chunks_written, second.chunks_deleted) == (0, 0, 4, 0, 0)
    assert point_ids(store) == ids


def test_change_delete_and_undecodable_are_exact(docs_dir: Path, store: VectorStore, embedder) -> None:
    sync(docs_dir, store, embedder)
    inventory = store.inventory()
    chess = document_id(docs_dir.resolve(), docs_dir.resolve() / "chess.txt")
    lighthouse = document_id(docs_dir.resolve(), docs_dir.resolve() / "lighthouse.md")
    old_chess_points = sum(s.points for s in inventory[chess].values())
    old_lighthouse_points = sum(s.points for s in inventory[lighthouse].values())
    before = store.count()

    (docs_dir / "chess.txt").write_text("The Zephyr Chess Club now meets on Fridays.\n")
    (docs_dir / "lighthouse.md").unlink()
    (docs_dir / "broken.txt").write_bytes(b"caf\xe9 \xff\xfe not utf-8")
    summary = sync(docs_dir, store, embedder)

    assert (summary.added, summary.changed, summary.unchanged, summary.removed) == (0, 1, 2, 1)
    assert [Path(f).name for f, _ in summary.failed] == ["broken.txt"]
    assert "UTF-8" in summary.failed[0][1]
    assert summary.chunks_written == 1
    assert summary.chunks_deleted == old_chess_points + old_lighthouse_points
    assert store.count() == before - old_chess_points - old_lighthouse_points + 1
    after = store.inventory()
    assert lighthouse not in after
    assert len(after[chess]) == 1  # only the new version is left
    hits = store.search(embedder.embed_query("When does the chess club meet?"), 1)
    assert "Fridays" in hits[0].text


def test_ids_are_deterministic(docs_dir: Path, store: VectorStore, embedder) -> None:
    sync(docs_dir, store, embedder)
    for doc_id, versions in store.inventory().items():
        for version, state in versions.items():
            expected = {point_id(doc_id, version, i) for i in range(state.chunk_count)}
            assert expected <= point_ids(store)


def test_a_partial_document_is_repaired(docs_dir: Path, store: VectorStore, embedder) -> None:
    sync(docs_dir, store, embedder)
    volcano = document_id(docs_dir.resolve(), docs_dir.resolve() / "volcano.html")
    (version, state), = store.inventory()[volcano].items()
    assert state.chunk_count >= 2
    store.client.delete(store.collection, points_selector=[point_id(volcano, version, 0)], wait=True)
    summary = sync(docs_dir, store, embedder)
    assert summary.changed == 1 and summary.chunks_written == state.chunk_count
    assert store.inventory()[volcano][version].points == state.chunk_count


def test_search_finds_the_right_document(docs_dir: Path, store: VectorStore, embedder) -> None:
    sync(docs_dir, store, embedder)
    cases = {
        "When did Mount Kessler last erupt?": "volcano.html",
        "How often should I feed a sourdough starter?": "bread.rst",
        "Who was the last lighthouse keeper?": "lighthouse.md",
    }
    for question, name in cases.items():
        hits = store.search(embedder.embed_query(question), 3)
        assert Path(hits[0].doc_id).name == name, (question, [h.doc_id for h in hits])


def test_cli_prints_summary_and_reports_bad_files(tmp_path: Path, docs_dir: Path) -> None:
    (docs_dir / "binary.txt").write_bytes(b"\x00\x01\x02\x03")
    env = {"SMALLFIRST_DATA_DIR": str(tmp_path / "data")}
    first = smallfirst("ingest", str(docs_dir), "--json", "--no-progress", env=env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["added"] == 4 and summary["failed"][0]["reason"] == "binary content (NUL bytes)"
    assert "binary.txt" in first.stderr
    again = smallfirst("ingest", str(docs_dir), "--no-progress", env=env)
    assert again.returncode == 0
    assert "0 added, 0 changed, 4 unchanged, 0 removed, 1 failed; chunks: 0 written" in again.stdout


def test_cli_refuses_a_store_in_use_with_a_clear_message(tmp_path: Path, docs_dir: Path) -> None:
    data = tmp_path / "data"
    (data / "qdrant").mkdir(parents=True)
    holder = QdrantClient(path=str(data / "qdrant"))
    try:
        result = smallfirst("ingest", str(docs_dir), "--no-progress", env={"SMALLFIRST_DATA_DIR": str(data)})
    finally:
        holder.close()
    assert result.returncode == 1
    assert "in use by another process" in result.stderr and "Traceback" not in result.stderr


def test_cli_bad_arguments(tmp_path: Path) -> None:
    missing = smallfirst("ingest", str(tmp_path / "nope"), env={})
    assert missing.returncode == 2 and "not a folder" in missing.stderr
    bad_env = smallfirst("ingest", str(tmp_path), env={"SMALLFIRST_CHUNK_TOKENS": "lots"})
    assert bad_env.returncode == 2 and "SMALLFIRST_CHUNK_TOKENS" in bad_env.stderr


def test_python_dash_m_ingest_works(tmp_path: Path, docs_dir: Path) -> None:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "smallfirst.ingest", str(docs_dir), "--no-progress"],
        env={**os.environ, "SMALLFIRST_DATA_DIR": str(tmp_path / "d")}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "4 added" in result.stdout
