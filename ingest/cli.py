"""``smallfirst ingest DIR`` and ``python -m ingest DIR``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ingest.sync import ChunkingOptions, SyncSummary, sync_folder
from retrieval.embedder import Embedder
from retrieval.errors import SmallfirstError
from retrieval.settings import Settings, SettingsError, add_arguments, from_args
from retrieval.store import VectorStore

INGEST_SETTINGS = (
    "data_dir", "qdrant_url", "qdrant_api_key", "collection", "embed_model", "embed_batch_size",
    "chunk_tokens", "chunk_overlap_tokens", "max_file_mb", "log_level",
)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the ingest command."""
    parser.add_argument("folder", type=Path, help="Folder to ingest: Markdown, text, reStructuredText, HTML, PDF and source code files.")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON on stdout.")
    parser.add_argument("--no-progress", action="store_true", help="Do not draw the progress bar.")
    add_arguments(parser, INGEST_SETTINGS)
    return parser


def ingest(settings: Settings, folder: Path, progress: bool = True) -> SyncSummary:
    """Embed ``folder`` into the configured store and return the summary."""
    from tqdm import tqdm

    embedder = Embedder(settings.embed_model, cache_size=16)
    store = VectorStore.open(
        settings.collection, embedder.dimension, path=settings.qdrant_path,
        url=settings.qdrant_url, api_key=settings.qdrant_api_key,
    )
    bar: tqdm | None = None

    def on_start(total: int) -> None:
        nonlocal bar
        bar = tqdm(total=total, unit="file", desc="ingest", disable=not progress, file=sys.stderr)

    def on_file(path: Path, outcome: str) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{outcome}: {path.name}"[:60])
            bar.update(1)

    try:
        return sync_folder(
            folder, store,
            embed=lambda texts: embedder.embed_documents(texts, settings.embed_batch_size),
            count_tokens=embedder.count_tokens,
            options=ChunkingOptions.from_settings(settings),
            batch_size=settings.embed_batch_size, on_file=on_file, on_start=on_start,
        )
    finally:
        if bar is not None:
            bar.close()
        store.close()


def run(args: argparse.Namespace) -> int:
    """Run the ingest command; returns the exit status."""
    try:
        settings = from_args(args)
    except SettingsError as exc:
        print(f"smallfirst ingest: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.folder.is_dir():
        print(f"smallfirst ingest: not a folder: {args.folder}", file=sys.stderr)
        return 2
    try:
        summary = ingest(settings, args.folder, progress=not args.no_progress)
    except SmallfirstError as exc:
        print(f"smallfirst ingest: {exc.message}", file=sys.stderr)
        return 1
    for file, reason in summary.failed:
        print(f"skipped {file}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(summary.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m ingest", description="Ingest a folder of documents."))
    return run(parser.parse_args(argv))
