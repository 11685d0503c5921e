"""Chunking follows structure, respects the size target, overlaps inside a section, loses nothing."""

import re

import pytest

from smallfirst.ingest.chunker import chunk_document


def words(text: str) -> int:
    return len(text.split())


DOC = (
    "# Guide\n\nIntro paragraph about the guide.\n\n"
    "## Install\n\n" + " ".join(f"Install step {i} is done now." for i in range(40)) + "\n\n"
    "## Usage\n\nShort usage note.\n\n```\ncode line one\n\ncode line two\n```\n\n"
    "### Details\n\nA detail paragraph.\n"
)


def test_every_sentence_is_kept() -> None:
    chunks = chunk_document(DOC, "Guide", words, target_tokens=60, overlap_tokens=10)
    joined = "\n".join(chunks)
    for i in range(40):
        assert f"Install step {i} is done now." in joined
    assert "Intro paragraph about the guide." in joined and "A detail paragraph." in joined


def test_chunks_respect_the_target() -> None:
    chunks = chunk_document(DOC, "Guide", words, target_tokens=60, overlap_tokens=10)
    assert len(chunks) > 3
    assert all(words(c) <= 60 for c in chunks), [words(c) for c in chunks]


def test_heading_trail_and_overlap_inside_a_section() -> None:
    chunks = chunk_document(DOC, "Guide", words, target_tokens=60, overlap_tokens=10)
    install = [c for c in chunks if "Install step" in c]
    assert len(install) >= 2
    assert install[0].startswith("Guide\n\n## Install")
    for before, after in zip(install, install[1:]):
        assert after.startswith("Guide › Install\n\n")
        body = after.split("\n\n", 2)[1]
        last_sentence = re.findall(r"Install step \d+ is done now\.", before)[-1]
        assert body == last_sentence  # the overlap repeats the end of the previous chunk


def test_fenced_code_stays_whole() -> None:
    chunks = chunk_document(DOC, "Guide", words, target_tokens=60, overlap_tokens=10)
    assert any("```\ncode line one\n\ncode line two\n```" in c for c in chunks)


def test_overlong_sentence_is_cut_at_words() -> None:
    text = "# T\n\n" + " ".join(f"w{i}" for i in range(300))
    chunks = chunk_document(text, "T", words, target_tokens=50, overlap_tokens=0)
    assert all(words(c) <= 50 for c in chunks)
    assert " ".join(" ".join(c.split("\n\n")[-1] for c in chunks).split()).endswith("w299")


def test_small_sections_are_merged_up_to_half_the_target() -> None:
    text = "# T\n\n" + "\n\n".join(f"## S{i}\n\nOne line {i}." for i in range(6))
    chunks = chunk_document(text, "T", words, target_tokens=200, overlap_tokens=0)
    assert len(chunks) == 1


@pytest.mark.slow
def test_sizes_with_the_real_tokenizer(embedder) -> None:
    text = "# Title\n\n" + "\n\n".join(
        "Paragraph %d. " % i + "The quick brown fox jumps over the lazy dog near the river bank. " * 6 for i in range(30)
    )
    chunks = chunk_document(text, "Title", embedder.count_tokens, target_tokens=220, overlap_tokens=32)
    sizes = [embedder.count_tokens(c) for c in chunks]
    assert max(sizes) <= 230 and min(sizes[:-1]) >= 100, sizes
    assert max(sizes) < embedder.max_tokens  # never truncated by the embedding model


def test_every_format_is_capped_in_characters() -> None:
    from smallfirst.ingest.loaders import LoadedDocument
    from smallfirst.ingest.sync import ChunkingOptions, chunk_loaded

    minified = "function a(){return 1};" * 800  # one 18,400-character line of code
    options = ChunkingOptions(max_chunk_chars=1000)
    documents = [
        LoadedDocument("bundle.js", minified, language="javascript"),
        LoadedDocument("notes", "# Notes\n\n" + "x" * 9000 + "\n\nA short closing line."),
        LoadedDocument("paper", "", pages=("y" * 5000, "A page of ordinary words. " * 200)),
    ]
    for document in documents:
        chunks = chunk_loaded(document, lambda text: len(text.split()) + len(text) // 8, options)
        assert chunks and max(len(text) for text, _ in chunks) <= 1000, document.title
