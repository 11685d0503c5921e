"""Loaders: clean HTML with its title, rst headings, clear refusals of non-text."""

from pathlib import Path

import pytest

from smallfirst.ingest.loaders import LoadError, load_document

FIXTURES = Path(__file__).parent / "fixtures" / "docs"


def test_html_is_cleaned_and_keeps_title_and_headings() -> None:
    path = FIXTURES / "volcano.html"
    doc = load_document(path, path.read_bytes())
    assert doc.title == "Mount Kessler volcano"
    assert "# Mount Kessler" in doc.text and "## Monitoring" in doc.text
    assert "turquoise acid lake" in doc.text
    for noise in ("console.log", "color:red", "Home", "Copyright"):
        assert noise not in doc.text


def test_rst_sections_become_headings() -> None:
    path = FIXTURES / "bread.rst"
    doc = load_document(path, path.read_bytes())
    assert doc.title == "Sourdough Bread"
    assert "# Sourdough Bread" in doc.text and "## Feeding the starter" in doc.text and "## Baking" in doc.text


def test_markdown_title_and_plain_text_title() -> None:
    md = FIXTURES / "lighthouse.md"
    assert load_document(md, md.read_bytes()).title == "Harbor Lighthouse"
    txt = FIXTURES / "chess.txt"
    assert load_document(txt, txt.read_bytes()).title == "chess"


@pytest.mark.parametrize(
    "data, reason",
    [(b"caf\xe9 latin-1", "not valid UTF-8"), (b"\x89PNG\x00\x00binary", "binary"), (b"   \n\n", "no text")],
)
def test_refusals_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(LoadError, match=reason):
        load_document(Path("x.txt"), data)


def test_utf8_bom_is_dropped() -> None:
    doc = load_document(Path("x.md"), "\ufeff# Hello\n\nWorld".encode())
    assert doc.title == "Hello" and not doc.text.startswith("\ufeff")


def test_html_nested_too_deep_is_refused_before_parsing() -> None:
    """BeautifulSoup takes minutes over 100,000 nested elements; such a file is refused from its tags alone."""
    with pytest.raises(LoadError, match="nested more than"):
        load_document(Path("deep.html"), b"<div>" * 100_000 + b"x")
    ordinary = b"<html><body>" + b"<div><p>One<p>Two<br><img src=x>" * 300 + b"</div>" * 300 + b"</body></html>"
    assert "One" in load_document(Path("flat.html"), ordinary).text
