"""Search latency of the embedded store at 10k and 100k chunks: qdrant-client's local search
against the exact matrix index in front of it, in one run and one process.

    python bench/store_bench.py [--sizes 10000,100000]

Synthetic chunks (unit 384-d vectors, ~800-character payloads) are written through the store's
own upsert into a fresh local Qdrant folder, which is then reopened (as a restarted service
would). Queries are stored vectors with a little noise; both paths must return the same top 5.
Prints the figures last, in one plain line, with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT

sys.path.insert(0, str(ROOT))

DIM = 384
QUERIES = 200
TOP_K = 5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def run(size: int, folder: Path) -> dict[str, float]:
    import numpy as np

    from smallfirst.retrieval.store import ChunkPoint, VectorStore, open_local_client

    rng = np.random.default_rng(size)
    vectors = rng.standard_normal((size, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer = VectorStore.open("bench", DIM, path=folder)
    started = time.perf_counter()
    for start in range(0, size, 1000):
        writer.upsert(ChunkPoint(doc_id=f"doc{i // 10}", doc_version="v1", chunk_index=i % 10, chunk_count=10,
                                 title=f"Document {i // 10}", uri=f"doc{i // 10}.md", text=f"chunk {i} " + "lorem ipsum " * 66,
                                 vector=vectors[i]) for i in range(start, min(size, start + 1000)))
    write_s = time.perf_counter() - started
    writer.close()

    client = open_local_client(folder)
    plain = VectorStore(client, "bench", DIM, indexes=None)
    started = time.perf_counter()
    exact = VectorStore(client, "bench", DIM, indexes={})
    exact.search(vectors[0], 1)  # builds the index
    build_s = time.perf_counter() - started
    queries = vectors[rng.integers(0, size, QUERIES)] + 0.02 * rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    times: dict[str, list[float]] = {"qdrant": [], "exact": []}
    agree = 0
    for q in queries:
        found = {}
        for name, store in (("qdrant", plain), ("exact", exact)):
            t = time.perf_counter()
            found[name] = [h.id for h in store.search(q, TOP_K)]
            times[name].append((time.perf_counter() - t) * 1000)
        agree += found["qdrant"] == found["exact"]
    client.close()
    out = {"write_s": write_s, "build_s": build_s, "agree": agree / QUERIES}
    for name, values in times.items():
        out[f"{name}_p50"], out[f"{name}_p95"] = statistics.median(values), pct(values, 0.95)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",") if s]
    results = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            results[size] = r = run(size, Path(tmp) / "qdrant")
        print(f"{size:>7} chunks: written in {r['write_s']:.1f} s, index built in {r['build_s']:.2f} s; "
              f"qdrant-client p50 {r['qdrant_p50']:.2f} p95 {r['qdrant_p95']:.2f} ms; "
              f"exact index p50 {r['exact_p50']:.2f} p95 {r['exact_p95']:.2f} ms; same top {TOP_K}: {r['agree']:.3f}", flush=True)
    print("store " + " ".join(
        f"n{size}_qdrant_p50_ms={r['qdrant_p50']:.2f} n{size}_exact_p50_ms={r['exact_p50']:.2f} "
        f"n{size}_exact_p95_ms={r['exact_p95']:.2f} n{size}_speedup={r['qdrant_p50'] / r['exact_p50']:.1f} "
        f"n{size}_same_top{TOP_K}={r['agree']:.3f}" for size, r in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
