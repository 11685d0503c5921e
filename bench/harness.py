"""What every bench script needs: a temporary store with docs/ ingested and a running service."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env(data_dir: str | Path, **extra: str) -> dict[str, str]:
    """A loopback-only lab: no token to pass around, and ingest may read any folder (the corpus under test)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "SMALLFIRST_DATA_DIR": str(data_dir), "SMALLFIRST_REQUIRE_TOKEN": "false",
            "SMALLFIRST_INGEST_ROOTS": "/", **extra}


def ingest(folder: Path, env: dict[str, str]) -> None:
    subprocess.run([str(BIN / "smallfirst"), "ingest", str(folder), "--no-progress"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def ingested_store(corpus: Path, data_dir: Path) -> tuple:
    """``corpus`` ingested into ``data_dir`` (incremental), and what the service retrieves with
    there: its settings, the embedder, the open store and the small model's token counter."""
    sys.path.insert(0, str(ROOT))
    from smallfirst.retrieval.embedder import Embedder
    from smallfirst.retrieval.store import VectorStore
    from smallfirst.service.llm.loading import Tokenizer, bundled_model_path
    from smallfirst.settings import Settings

    ingest(corpus, bench_env(data_dir))
    settings = Settings.load({"SMALLFIRST_DATA_DIR": str(data_dir)})
    embedder = Embedder(cache_size=1)
    store = VectorStore.open(settings.collection, embedder.dimension, path=settings.qdrant_path)
    return settings, embedder, store, Tokenizer(bundled_model_path()).count


async def answer_model(scheduler: Any, settings: Any) -> Any:
    """The small answer model loaded as the service loads it (its context, prefill steps and saved
    prefixes from ``settings``) on ``scheduler``, a started :class:`CpuScheduler`."""
    sys.path.insert(0, str(ROOT))
    from smallfirst.service.llm.loading import bundled_model_path
    from smallfirst.service.llm.local import LocalBackend
    from smallfirst.service.scheduler import Priority

    return await LocalBackend.load("small", bundled_model_path(), settings.answer_ctx, 0, scheduler, Priority.ANSWER,
                                   settings.prefill_step_tokens, 16, int(settings.answer_kv_cache_mb * 1024 * 1024))


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], ready_url: str, what: str, timeout_s: float) -> Iterator[None]:
    """Run ``command`` until the block ends; enter the block once ``ready_url`` answers 200."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{what} did not become ready")
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def service(env: dict[str, str], timeout_s: float = 180) -> Iterator[int]:
    """Run `smallfirst serve` on a free port until the block ends; yields the port once it is ready."""
    port = free_port()
    with running([str(BIN / "smallfirst"), "serve", "--log-level", "warning"], {**env, "SMALLFIRST_PORT": str(port)},
                 f"http://127.0.0.1:{port}/readyz", "the service", timeout_s):
        yield port
