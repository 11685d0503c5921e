"""The one sync routine: make the store hold exactly the current chunks of a folder's documents."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from smallfirst.ingest.chunker import break_long_runs, cap_chars, chunk_document
from smallfirst.ingest.code import chunk_code
from smallfirst.ingest.discover import discover, inside, relative_name
from smallfirst.ingest.loaders import LoadedDocument, LoadError, load_document
from smallfirst.settings import Settings
from smallfirst.retrieval.store import ChunkPoint, ChunkStore, DocState

log = logging.getLogger(__name__)

CHUNKER_REVISION = "3"

Embed = Callable[[Sequence[str]], np.ndarray]
CountTokens = Callable[[str], int]


@dataclass
class SyncSummary:
    """What one sync did."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks_written: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        return (
            f"files: {self.added} added, {self.changed} changed, {self.unchanged} unchanged, "
            f"{self.removed} removed, {len(self.failed)} failed; chunks: {self.chunks_written} written, "
            f"{self.chunks_deleted} deleted; {self.seconds:.1f} s"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SyncSummary":
        return cls(
            added=data["added"], changed=data["changed"], unchanged=data["unchanged"], removed=data["removed"],
            failed=[(f["file"], f["reason"]) for f in data["failed"]], chunks_written=data["chunks_written"],
            chunks_deleted=data["chunks_deleted"], seconds=data["seconds"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "changed": self.changed, "unchanged": self.unchanged,
            "removed": self.removed, "failed": [{"file": f, "reason": r} for f, r in self.failed],
            "chunks_written": self.chunks_written, "chunks_deleted": self.chunks_deleted,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ChunkingOptions:
    target_tokens: int = 220
    overlap_tokens: int = 32
    max_file_bytes: int = 50_000_000
    max_chunk_chars: int = 4000

    @classmethod
    def from_settings(cls, settings: Settings) -> "ChunkingOptions":
        return cls(settings.chunk_tokens, settings.chunk_overlap_tokens, int(settings.max_file_mb * 1_000_000),
                   settings.max_chunk_chars)

    def fingerprint(self) -> bytes:
        """Part of each document version, so that new chunking settings re-chunk every file."""
        return f"|chunker={CHUNKER_REVISION}|{self.target_tokens}|{self.overlap_tokens}|{self.max_chunk_chars}".encode()


def chunk_loaded(document: LoadedDocument, count: CountTokens, options: ChunkingOptions) -> list[tuple[str, tuple[tuple[str, Any], ...]]]:
    """(chunk text, payload extras) for a loaded document: PDF chunks never span pages and carry
    their page; code chunks follow definitions and carry their language. Every chunk, whatever the
    format, is at most ``options.max_chunk_chars`` characters."""
    limit = options.max_chunk_chars

    def capped(chunks: list[str]) -> list[str]:
        return cap_chars(chunks, limit)

    if document.pages is not None:
        return [
            (text, (("page", number),))
            for number, page in enumerate(document.pages, 1) if page.strip()
            for text in capped(chunk_document(break_long_runs(page, limit), f"{document.title} › page {number}", count,
                                              options.target_tokens, options.overlap_tokens))
        ]
    text = break_long_runs(document.text, limit)
    if document.language is not None:
        extra = (("language", document.language),)
        return [(chunk, extra) for chunk in capped(chunk_code(text, document.language, document.title, count, options.target_tokens))]
    return [(chunk, ()) for chunk in capped(chunk_document(text, document.title, count, options.target_tokens, options.overlap_tokens))]


def folder_label(root: Path) -> str:
    """The first part of the ids of a folder's documents: its name and a short hash of its real path,
    so two folders of the same name never share ids and no server path reaches a client."""
    real = root.resolve()
    digest = hashlib.sha256(real.as_posix().encode()).hexdigest()[:8]
    return f"{real.name or 'root'}-{digest}"


def document_id(root: Path, path: Path) -> str:
    """Stable id of a file: its folder's label, then its path inside the folder (the file name stays last)."""
    return f"{folder_label(root)}/{relative_name(path, root)}"


def _complete(state: DocState) -> bool:
    return state.chunk_count > 0 and state.points == state.chunk_count


def sync_folder(
    root: Path,
    store: ChunkStore,
    embed: Embed,
    count_tokens: CountTokens,
    options: ChunkingOptions = ChunkingOptions(),
    batch_size: int = 32,
    on_file: Callable[[Path, str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> SyncSummary:
    """Add, replace and prune the chunks of ``root``'s documents so the store matches the folder.

    New chunks are written (and waited for) before a document's old version is deleted, so a
    reader never sees a document vanish. A file that cannot be read or decoded is reported in
    the summary and left as it was in the store.
    """
    started = time.perf_counter()
    root = root.resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    summary = SyncSummary()
    inventory = store.inventory()
    files = discover(root, skipped=summary.failed)
    if on_start:
        on_start(len(files))
    present: set[str] = set()
    for path in files:
        doc_id = document_id(root, path)
        present.add(doc_id)
        try:
            outcome = _sync_file(root, path, doc_id, inventory.get(doc_id, {}), store, embed, count_tokens, options,
                                 batch_size, summary)
        except Exception as exc:  # one bad file (a pypdf assertion, a parser recursion) never ends the job
            log.warning("ingest of %s failed", path, exc_info=True)
            summary.failed.append((relative_name(path, root), f"{type(exc).__name__}: {exc}"[:300]))
            outcome = "failed"
        if on_file:
            on_file(path, outcome)
    # Ids under this folder's label, and the absolute-path ids older versions wrote for it.
    prefixes = (folder_label(root) + "/", root.as_posix().rstrip("/") + "/")
    for doc_id, versions in inventory.items():
        if doc_id.startswith(prefixes) and doc_id not in present:
            store.delete_doc(doc_id)
            summary.removed += 1
            summary.chunks_deleted += sum(s.points for s in versions.values())
    summary.seconds = time.perf_counter() - started
    return summary


def _sync_file(
    root: Path, path: Path, doc_id: str, versions: dict[str, DocState], store: ChunkStore, embed: Embed,
    count_tokens: CountTokens, options: ChunkingOptions, batch_size: int, summary: SyncSummary,
) -> str:
    """Bring one file up to date; returns its outcome (added, changed, unchanged, failed)."""
    name = relative_name(path, root)
    if not inside(path, root):  # replaced by a symlink since discovery
        summary.failed.append((name, "symlink to a file outside the ingested folder"))
        return "failed"
    try:
        size = path.stat().st_size
        if size > options.max_file_bytes:
            summary.failed.append((name, f"{size} bytes is over the {options.max_file_bytes}-byte limit"))
            return "failed"
        data = path.read_bytes()
    except OSError as exc:
        summary.failed.append((name, f"cannot read: {exc.strerror or exc}"))
        return "failed"
    version = hashlib.sha256(data + options.fingerprint()).hexdigest()[:32]
    stale = sum(s.points for v, s in versions.items() if v != version)
    if version in versions and _complete(versions[version]):
        if stale:
            store.delete_doc(doc_id, keep_version=version)
            summary.chunks_deleted += stale
        summary.unchanged += 1
        return "unchanged"
    try:
        document = load_document(path, data)
    except LoadError as exc:
        summary.failed.append((name, str(exc)))
        return "failed"
    chunks = chunk_loaded(document, count_tokens, options)
    if not chunks:
        summary.failed.append((name, "no text"))
        return "failed"
    uri = relative_name(path, root)
    source = (("path", (root / uri).as_posix()), ("root", root.as_posix()))
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size]
        vectors = embed([text for text, _ in batch])
        summary.chunks_written += store.upsert(
            ChunkPoint(doc_id, version, start + i, len(chunks), document.title, uri, text, vectors[i], extra + source)
            for i, (text, extra) in enumerate(batch)
        )
    previous = sum(s.points for s in versions.values())
    if previous:
        store.delete_doc(doc_id, keep_version=version)
        summary.chunks_deleted += stale
    if versions:
        summary.changed += 1
        return "changed"
    summary.added += 1
    return "added"
