"""The int8 ONNX embedder against sentence-transformers on torch, in one run.

    python bench/embed_bench.py

1. Ingests Debian's python3.11-doc pages (the pydoc QA set's corpus; `apt-get install python3.11-doc`)
   and docs/ with the real CLI, once per backend, into separate stores: chunks per second.
2. In this process, per backend: query embedding p50/p95 over both QA sets' questions (each
   question once, so no cache hit), and retrieval hit@4 of each set (a grounded question's page
   among the top 4), each backend searching its own store.
3. The cosine of int8 to float vectors of 300 stored chunks.
Prints the figures last, in one plain line, with the ratios.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eval_bench import SETS, pydoc_corpus
from harness import BIN, ROOT, bench_env

sys.path.insert(0, str(ROOT))

BACKENDS = ("torch", "onnx")
TOP_K = 4


def ingest(corpus: Path, data_dir: Path, backend: str) -> dict:
    out = subprocess.run([str(BIN / "smallfirst"), "ingest", str(corpus), "--json", "--no-progress", "--embed-backend", backend],
                         env=bench_env(data_dir), check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def questions(name: str) -> list[dict]:
    return [json.loads(line) for line in SETS[name].read_text().splitlines() if line.strip()]


def measure(backend: str, stores: dict[str, Path]) -> tuple[dict, Any]:
    """Query latency and hit@4 for one backend over its own stores, and the embedder."""
    from smallfirst.retrieval.embedder import Embedder
    from smallfirst.settings import Settings
    from smallfirst.retrieval.store import VectorStore

    embedder = Embedder(cache_size=1, backend=backend)
    embedder.embed_query("warm up")
    latencies: list[float] = []
    hits: dict[str, float] = {}
    for name, data_dir in stores.items():
        store = VectorStore.open("docs", embedder.dimension, path=Settings.load({"SMALLFIRST_DATA_DIR": str(data_dir)}).qdrant_path)
        grounded = [q for q in questions(name) if q["kind"] == "grounded"]
        found = 0
        for q in grounded:
            started = time.perf_counter()
            vector = embedder.embed_documents([q["question"]])[0]
            latencies.append((time.perf_counter() - started) * 1000)
            pages = {Path(h.doc_id).name for h in store.search(vector, TOP_K)}
            found += bool(pages & set(q["pages"]))
        hits[name] = found / len(grounded)
        store.close()
    ordered = sorted(latencies)
    return {"query_p50_ms": statistics.median(latencies), "query_p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
            "hit4": hits}, embedder


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        corpora = {"docs": ROOT / "docs", "pydoc": pydoc_corpus(tmp / "pydoc")}
        rates: dict[str, float] = {}
        stores: dict[str, dict[str, Path]] = {b: {} for b in BACKENDS}
        for backend in BACKENDS:
            for name, corpus in corpora.items():
                data_dir = tmp / f"{backend}-{name}"
                report = ingest(corpus, data_dir, backend)
                stores[backend][name] = data_dir
                if name == "pydoc":
                    rates[backend] = report["chunks_written"] / report["seconds"]
                    print(f"{backend:>5} ingest of pydoc: {report['chunks_written']} chunks in {report['seconds']:.1f} s "
                          f"= {rates[backend]:.1f} chunks/s", flush=True)
        measured = {b: measure(b, stores[b]) for b in BACKENDS}
        results = {b: figures for b, (figures, _) in measured.items()}
        # The cosine of int8 to float vectors, over stored chunk texts.
        from smallfirst.settings import Settings
        from smallfirst.retrieval.store import VectorStore

        store = VectorStore.open("docs", 384, path=Settings.load({"SMALLFIRST_DATA_DIR": str(stores["onnx"]["pydoc"])}).qdrant_path)
        texts = store.sample_texts(300)
        store.close()
        int8 = measured["onnx"][1].embed_documents(texts)
        reference = measured["torch"][1].embed_documents(texts)
        cosine = (int8 * reference).sum(axis=1)
    for backend in BACKENDS:
        r = results[backend]
        print(f"{backend:>5}: query p50 {r['query_p50_ms']:.2f} ms p95 {r['query_p95_ms']:.2f} ms; "
              f"hit@{TOP_K} docs {r['hit4']['docs']:.3f} pydoc {r['hit4']['pydoc']:.3f}")
    print(f"cosine int8 vs float over {len(texts)} chunks: min {float(cosine.min()):.4f} mean {float(cosine.mean()):.4f}")
    t, o = results["torch"], results["onnx"]
    print(f"embed ingest_torch_chunks_per_s={rates['torch']:.1f} ingest_onnx_chunks_per_s={rates['onnx']:.1f} "
          f"ingest_ratio={rates['onnx'] / rates['torch']:.2f} query_p50_torch_ms={t['query_p50_ms']:.2f} "
          f"query_p50_onnx_ms={o['query_p50_ms']:.2f} query_ratio={t['query_p50_ms'] / o['query_p50_ms']:.2f} "
          f"hit4_docs={t['hit4']['docs']:.3f}->{o['hit4']['docs']:.3f} hit4_pydoc={t['hit4']['pydoc']:.3f}->{o['hit4']['pydoc']:.3f} "
          f"cosine_min={float(cosine.min()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
