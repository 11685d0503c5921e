"""Ingest throughput, and keystroke latency with and without an ingest job running in the service.

    python bench/ingest_bench.py [CORPUS]

CORPUS defaults to Debian's python3.11-doc tutorial and howto pages when installed
(/usr/share/doc/python3.11/html), else to docs/. Prints the figures last, in one plain line.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

from harness import BIN, ROOT, bench_env, ingest, service

from first_token import TYPED, first_token, pct

PYDOC = Path("/usr/share/doc/python3.11/html")


def default_corpus(tmp: Path) -> Path:
    if not PYDOC.is_dir():
        return ROOT / "docs"
    corpus = tmp / "pydoc"
    for part in ("tutorial", "howto"):
        shutil.copytree(PYDOC / part, corpus / part)
    return corpus


async def keystrokes(url: str, rounds: int = 2, pause_s: float = 0.15) -> list[float]:
    """Time to first token of consecutive keystrokes, with a typist's pause before each one (so the
    CPU is busy with ingest work, if there is any, when the keystroke arrives)."""
    out: list[float] = []
    async with websockets.connect(url) as ws:
        await ws.recv()
        for r in range(rounds):
            for i in range(10, len(TYPED) + 1, 2):
                await asyncio.sleep(pause_s)
                out.append(await first_token(ws, {"type": "complete", "id": f"k{r}-{i}", "text": TYPED[:i], "max_tokens": 4}))
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else default_corpus(tmp)
        files = sum(1 for p in corpus.rglob("*") if p.is_file())
        env = bench_env(tmp / "cli")
        cli = json.loads(subprocess.run([str(BIN / "smallfirst"), "ingest", str(corpus), "--json", "--no-progress"],
                                        env=env, check=True, capture_output=True, text=True).stdout)
        env = bench_env(tmp / "svc")
        ingest(ROOT / "docs", env)
        with service(env) as port:
            base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
            idle = asyncio.run(keystrokes(url))
            job = httpx.post(base + "/api/ingest", json={"path": str(corpus.resolve())}).json()
            time.sleep(1.0)  # the job is under way: files listed, first batches embedding
            busy = asyncio.run(keystrokes(url))
            during = httpx.get(f"{base}/api/ingest/{job['id']}").json()
            while during["state"] in ("queued", "running"):
                time.sleep(0.5)
                during = httpx.get(f"{base}/api/ingest/{job['id']}").json()
    summary = during["summary"]
    cli_rate = cli["chunks_written"] / cli["seconds"]
    worker_rate = summary["chunks_written"] / summary["seconds"]
    print(f"corpus: {corpus} ({files} files)")
    print(f"cli ingest: {cli['added']} files, {cli['chunks_written']} chunks in {cli['seconds']:.1f} s, {len(cli['failed'])} skipped")
    print(f"worker ingest: {summary['chunks_written']} chunks in {summary['seconds']:.1f} s")
    print(f"keystrokes idle: n={len(idle)} p50={statistics.median(idle):.1f} p95={pct(idle, 0.95):.1f} ms")
    print(f"keystrokes during ingest: n={len(busy)} p50={statistics.median(busy):.1f} p95={pct(busy, 0.95):.1f} ms")
    print(f"ingest cli_chunks_per_s={cli_rate:.1f} worker_chunks_per_s={worker_rate:.1f} "
          f"keystroke_p50_idle_ms={statistics.median(idle):.1f} keystroke_p50_during_ingest_ms={statistics.median(busy):.1f} "
          f"keystroke_p95_idle_ms={pct(idle, 0.95):.1f} keystroke_p95_during_ingest_ms={pct(busy, 0.95):.1f} "
          f"p50_ratio={statistics.median(busy) / statistics.median(idle):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
