"""Load documents as text with ``#`` headings, whatever their format."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bs4 import BeautifulSoup, UnicodeDammit

from smallfirst.ingest.code import LANGUAGES

_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+<>:.])\1{2,}\s*$")
_MD_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


class LoadError(Exception):
    """A file cannot be turned into text; the message says why."""


@dataclass(frozen=True)
class LoadedDocument:
    """A document's title and its text (headings marked with ``#``); source code says its
    language, a PDF keeps the text of each page so chunks can cite their page."""

    title: str
    text: str
    language: str | None = None
    pages: tuple[str, ...] | None = None


def _fallback_title(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name


def decode_text(data: bytes, path: Path) -> str:
    """UTF-8 text (a BOM is dropped); anything else is refused, not guessed."""
    if b"\x00" in data:
        raise LoadError("binary content (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"not valid UTF-8 at byte {exc.start}") from None


def load_markdown(data: bytes, path: Path) -> LoadedDocument:
    text = _FRONT_MATTER.sub("", decode_text(data, path))
    match = _MD_TITLE.search(text)
    return LoadedDocument(match.group(1).strip() if match else _fallback_title(path), text)


def load_plain(data: bytes, path: Path) -> LoadedDocument:
    return LoadedDocument(_fallback_title(path), decode_text(data, path))


def load_rst(data: bytes, path: Path) -> LoadedDocument:
    """reStructuredText: section titles (underlined, optionally overlined) become ``#`` headings."""
    lines = decode_text(data, path).splitlines()
    levels: list[str] = []
    out: list[str] = []
    title = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        over = bool(_RST_ADORNMENT.match(line)) and i + 2 < len(lines) and lines[i + 2] == line
        if over:
            i += 1
            line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and not _RST_ADORNMENT.match(line) and _RST_ADORNMENT.match(nxt) and len(nxt.strip()) >= len(line.strip()):
            style = ("o" if over else "u") + nxt.strip()[0]
            if style not in levels:
                levels.append(style)
            level = min(levels.index(style) + 1, 6)
            title = title or line.strip()
            out.extend(["", "#" * level + " " + line.strip(), ""])
            i += 2
            continue
        out.append(line)
        i += 1
    return LoadedDocument(title or _fallback_title(path), "\n".join(out))


MAX_HTML_DEPTH = 2000
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^>]*?(/?)>")
# Elements that never hold others, or that the parser closes implicitly: they do not add to the depth.
_FLAT_TAGS = frozenset("area base br col embed hr img input link meta source track wbr p li dt dd tr td th option".split())


def html_depth(markup: str) -> int:
    """How deeply the elements of ``markup`` nest, from its tags alone (no tree is built)."""
    depth = deepest = 0
    for closing, name, self_closing in _TAG.findall(markup):
        if name.lower() in _FLAT_TAGS or self_closing:
            continue
        depth = max(0, depth - 1) if closing else depth + 1
        deepest = max(deepest, depth)
    return deepest


_BLOCK_TAGS = ("p", "div", "section", "article", "li", "pre", "blockquote", "tr", "table", "dt", "dd", "br", "hr")
_DROP_TAGS = ("script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "svg")


def load_html(data: bytes, path: Path) -> LoadedDocument:
    """HTML to clean text: navigation and scripts dropped, headings kept, the page title kept."""
    if b"\x00" in data:
        raise LoadError("binary content (NUL bytes)")
    dammit = UnicodeDammit(data, is_html=True)
    if dammit.unicode_markup is None:
        raise LoadError("cannot tell the text encoding")
    if html_depth(dammit.unicode_markup) > MAX_HTML_DEPTH:  # the parser would take minutes (quadratic in depth)
        raise LoadError(f"elements nested more than {MAX_HTML_DEPTH} deep")
    soup = BeautifulSoup(dammit.unicode_markup, "html.parser")
    title_tag = soup.find("title")
    title = " ".join(title_tag.get_text().split()) if title_tag else ""
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    for level in range(1, 7):
        for heading in root.find_all(f"h{level}"):
            text = " ".join(heading.get_text(" ").split())
            heading.replace_with(f"\n\n{'#' * level} {text}\n\n" if text else "")
            if level == 1 and text and not title:
                title = text
    for pre in root.find_all("pre"):
        pre.replace_with("\n\n```\n" + pre.get_text().strip("\n") + "\n```\n\n")
    for tag in root.find_all(_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    raw = root.get_text()
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", raw):
        if block.lstrip().startswith("```"):
            paragraphs.append(block.strip("\n"))
        elif " ".join(block.split()):
            paragraphs.append(" ".join(block.split()))
    return LoadedDocument(title or _fallback_title(path), "\n\n".join(paragraphs))


def load_pdf(data: bytes, path: Path) -> LoadedDocument:
    """The text layer of each page; encrypted, broken or image-only PDFs are refused."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError("encrypted PDF")
        pages = tuple(" ".join((page.extract_text() or "").split()) for page in reader.pages)
        metadata = reader.metadata
        title = str((metadata.get("/Title") if metadata is not None else None) or "").strip()
    except LoadError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise LoadError(f"broken PDF: {exc}") from None
    if not any(pages):
        raise LoadError("PDF without a text layer")
    return LoadedDocument(title or _fallback_title(path), "\n\n".join(pages), pages=pages)


def load_code(data: bytes, path: Path) -> LoadedDocument:
    return LoadedDocument(path.name, decode_text(data, path), language=LANGUAGES[path.suffix.lower()])


LOADERS: dict[str, Callable[[bytes, Path], LoadedDocument]] = {
    ".md": load_markdown, ".markdown": load_markdown, ".txt": load_plain,
    ".rst": load_rst, ".html": load_html, ".htm": load_html, ".pdf": load_pdf,
    **{suffix: load_code for suffix in LANGUAGES},
}
SUPPORTED_SUFFIXES = tuple(LOADERS)


def load_document(path: Path, data: bytes) -> LoadedDocument:
    """Load ``data`` read from ``path`` with the loader for its suffix."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoadError(f"unsupported file type {path.suffix!r}")
    document = loader(data, path)
    if not document.text.strip():
        raise LoadError("no text")
    return document
