"""``smallfirst ingest DIR`` and ``python -m smallfirst.ingest DIR``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

from smallfirst.ingest.loaders import SUPPORTED_SUFFIXES
from smallfirst.ingest.lock import WriterLock
from smallfirst.ingest.sync import ChunkingOptions, SyncSummary, sync_folder
from smallfirst.credentials import LOCAL_HEADER, client_token, local_key
from smallfirst.retrieval.embedder import Embedder
from smallfirst.errors import SmallfirstError, StoreLocked
from smallfirst.settings import Settings, SettingsError, add_arguments, from_args
from smallfirst.retrieval.store import VectorStore, open_local_client

INGEST_SETTINGS = (
    "data_dir", "qdrant_url", "qdrant_api_key", "collection", "embed_model", "embed_backend", "embed_batch_size",
    "chunk_tokens", "chunk_overlap_tokens", "max_file_mb", "max_chunk_chars", "api_token", "log_level",
)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the ingest command."""
    parser.add_argument("folder", type=Path, help="Folder to ingest: Markdown, text, reStructuredText, HTML, PDF and source code files.")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON on stdout.")
    parser.add_argument("--no-progress", action="store_true", help="Do not draw the progress bar.")
    parser.add_argument("--watch", action="store_true",
                        help="After the first sync, keep watching the folder and sync again within seconds of a change.")
    parser.add_argument("--server", metavar="URL",
                        help="Submit the job to the service at URL (e.g. http://127.0.0.1:8000) instead of writing the "
                        "store directly; used automatically when a running service holds the embedded store.")
    add_arguments(parser, INGEST_SETTINGS)
    return parser


class DirectIngest:
    """Writes the store from this process: the embedder and the store stay open across syncs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedder = Embedder(settings.embed_model, cache_size=16, backend=settings.embed_backend, cache_root=settings.embed_cache_dir)
        self.store = VectorStore.open(
            settings.collection, self.embedder.dimension, path=settings.qdrant_path,
            url=settings.qdrant_url, api_key=settings.qdrant_api_key,
        )

    def sync(self, folder: Path, progress: bool = True) -> SyncSummary:
        from tqdm import tqdm

        bar: tqdm | None = None

        def on_start(total: int) -> None:
            nonlocal bar
            bar = tqdm(total=total, unit="file", desc="ingest", disable=not progress, file=sys.stderr)

        def on_file(path: Path, outcome: str) -> None:
            if bar is not None:
                bar.set_postfix_str(f"{outcome}: {path.name}"[:60])
                bar.update(1)

        try:
            with WriterLock(self.settings.data_dir):
                return sync_folder(
                    folder, self.store,
                    embed=lambda texts: self.embedder.embed_documents(texts, self.settings.embed_batch_size),
                    count_tokens=self.embedder.count_tokens, options=ChunkingOptions.from_settings(self.settings),
                    batch_size=self.settings.embed_batch_size, on_file=on_file, on_start=on_start,
                )
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        self.store.close()


def running_service(settings: Settings) -> str | None:
    """The URL of the live service that holds the embedded store, from the file it writes on start."""
    try:
        url = str(json.loads(settings.service_file.read_text())["url"])
        httpx.get(url + "/healthz", timeout=2).raise_for_status()
        return url
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return None


def ingest_remote(url: str, folder: Path, collection: str, token: str | None, progress: bool = True,
                  local_key: str | None = None) -> SyncSummary:
    """Submit the folder to a running service's ingest worker and follow the job to its end. The local
    key (read from DATA_DIR) tells the service that this user may ingest any folder of this machine."""
    from tqdm import tqdm

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if local_key:
        headers[LOCAL_HEADER] = local_key
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=10) as client:
        answer = client.post("/api/ingest", json={"path": str(folder.resolve()), "collection": collection})
        if answer.status_code != 202:
            raise SmallfirstError(f"the service refused the job: HTTP {answer.status_code} {answer.text[:300]}")
        job = answer.json()
        with tqdm(total=None, unit="file", desc="ingest", disable=not progress, file=sys.stderr) as bar:
            while job["state"] in ("queued", "running"):
                time.sleep(0.3)
                response = client.get(f"/api/ingest/{job['id']}")
                response.raise_for_status()
                job = response.json()
                if job["files_total"]:
                    bar.total = job["files_total"]
                bar.n = job["files_done"]
                bar.set_postfix_str(f"{job['chunks_written']} chunks")
                bar.refresh()
    if job["state"] != "done":
        raise SmallfirstError(f"the ingest job failed on the service: {job.get('error')}")
    return SyncSummary.from_dict(job["summary"])


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
    progress = not args.no_progress
    server = args.server
    direct: DirectIngest | None = None
    try:
        if server is None and not settings.qdrant_url:
            try:
                open_local_client(settings.qdrant_path).close()
            except StoreLocked as exc:
                server = running_service(settings)
                if server is None:
                    raise exc
                print(f"smallfirst ingest: the store is held by the service at {server}; the job runs there",
                      file=sys.stderr)
        if server is None:
            direct = DirectIngest(settings)

        def once(show_progress: bool) -> SyncSummary:
            if direct is not None:
                return direct.sync(args.folder, show_progress)
            return ingest_remote(str(server), args.folder, settings.collection, client_token(settings), show_progress,
                                 local_key(settings))

        report(once(progress), args.json)
        if args.watch:
            def again() -> None:
                summary = once(False)
                if summary.added or summary.changed or summary.removed or summary.failed:
                    report(summary, args.json)
            watch_folder(args.folder, again)
    except SmallfirstError as exc:
        print(f"smallfirst ingest: {exc.message}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"smallfirst ingest: cannot reach the service at {server}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if direct is not None:
            direct.close()
    return 0


def report(summary: SyncSummary, as_json: bool) -> None:
    """Print a summary (skipped files on stderr)."""
    for file, reason in summary.failed:
        print(f"skipped {file}: {reason}", file=sys.stderr)
    print(json.dumps(summary.as_dict()) if as_json else summary.line(), flush=True)


def watch_folder(folder: Path, on_change: Callable[[], None], debounce_ms: int = 1000) -> None:
    """Call ``on_change`` once the watcher runs (catching changes made since the first sync), then
    after each burst of added, changed or deleted documents under ``folder``."""
    from watchfiles import watch

    started = False
    for changes in watch(folder, debounce=debounce_ms, recursive=True, rust_timeout=500, yield_on_timeout=True):
        if not started:
            started = True
            print(f"smallfirst ingest: watching {folder} (Ctrl-C stops)", file=sys.stderr, flush=True)
            on_change()
        elif any(Path(p).suffix.lower() in SUPPORTED_SUFFIXES for _, p in changes):
            on_change()


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m smallfirst.ingest", description="Ingest a folder of documents."))
    return run(parser.parse_args(argv))
