"""PDF and source code ingestion, and the files that are refused (encrypted, broken, binary, too big)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fpdf import FPDF

from smallfirst.ingest.code import chunk_code
from smallfirst.ingest.loaders import LoadError, load_document
from smallfirst.ingest.sync import ChunkingOptions, sync_folder
from smallfirst.retrieval.store import VectorStore
from smallfirst.service.protocol import source_entry

PYTHON = '''"""Billing helpers."""
import math


def invoice_total(lines, tax_rate):
    """Sum the invoice lines and add tax."""
    subtotal = sum(line.price * line.quantity for line in lines)
    return round(subtotal * (1 + tax_rate), 2)


class RefundPolicy:
    """Refunds within thirty days."""

    def allowed(self, days_since_purchase):
        return days_since_purchase <= 30

    def amount(self, paid):
        return math.floor(paid * 0.9)
'''


def make_pdf(path: Path, pages: list[str], password: str | None = None) -> None:
    pdf = FPDF()
    pdf.set_title("Field Guide")
    for text in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 8, text)
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    pdf.output(str(path))


def test_pdf_pages_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "guide.pdf"
    make_pdf(path, ["The heron nests in reed beds near the lake.", "The osprey dives for trout in the river."])
    doc = load_document(path, path.read_bytes())
    assert doc.title == "Field Guide" and doc.pages is not None and len(doc.pages) == 2
    assert "osprey" in doc.pages[1] and "osprey" not in doc.pages[0]


def test_encrypted_and_broken_pdfs_are_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked.pdf"
    make_pdf(locked, ["secret"], password="pw")
    with pytest.raises(LoadError, match="encrypted"):
        load_document(locked, locked.read_bytes())
    with pytest.raises(LoadError, match="broken PDF|without a text layer"):
        load_document(tmp_path / "bad.pdf", b"%PDF-1.4\nthis is not a pdf at all")


def test_python_chunks_follow_definitions() -> None:
    chunks = chunk_code(PYTHON, "python", "billing.py", lambda s: len(s.split()), target_tokens=40)
    assert any("def invoice_total" in c and "return round" in c for c in chunks)
    assert any("class RefundPolicy" in c and "def amount" in c for c in chunks)
    for c in chunks:
        assert c.startswith("billing.py (python)")
        assert not ("def invoice_total" in c and "class RefundPolicy" in c)  # each definition stands alone at this size


@pytest.mark.slow
def test_pdf_and_code_are_searchable_with_page_and_language(tmp_path: Path, embedder) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "guide.pdf", ["The heron nests in reed beds near the lake.", "The osprey dives for trout in the river."])
    (docs / "billing.py").write_text(PYTHON)
    make_pdf(docs / "locked.pdf", ["secret"], password="pw")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (docs / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (docs / "huge.md").write_text("# Huge\n\n" + "words " * 400)
    store = VectorStore.open("docs", embedder.dimension, path=tmp_path / "qdrant")
    try:
        options = ChunkingOptions(max_file_bytes=1500)
        summary = sync_folder(docs, store, embedder.embed_documents, embedder.count_tokens, options)
        failed = {Path(f).name: reason for f, reason in summary.failed}
        assert summary.added == 2 and set(failed) == {"locked.pdf", "broken.pdf", "blob.txt", "huge.md"}
        assert "encrypted" in failed["locked.pdf"] and "binary" in failed["blob.txt"] and "limit" in failed["huge.md"]
        hit = store.search(embedder.embed_query("Where does the osprey hunt for fish?"), 1)[0]
        assert Path(hit.doc_id).name == "guide.pdf" and hit.page == 2
        assert source_entry(hit)["page"] == 2
        code = store.search(embedder.embed_query("how is the refund amount computed"), 1)[0]
        assert code.language == "python" and "def amount" in code.text
    finally:
        store.close()
