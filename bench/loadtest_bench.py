"""Service latency under load, and its overhead over llama-cpp-python called directly, in one run.

1. Ingests docs/ into a temporary store and starts `smallfirst serve` on the bundled model.
2. Runs `smallfirst loadtest` for each workload at a light and a saturating rate.
3. Stops the service (never two model-heavy processes at once), then runs the same prompts
   directly on llama-cpp-python: the answer prompts the service builds, and the typed prefixes.
4. Prints the figures, and last the overhead ratios in one plain line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import BIN, ROOT, bench_env, ingest, service

sys.path.insert(0, str(ROOT))

RUNS = (  # (name, workload, rate per s, duration s): light keeps the model mostly idle, saturating overloads it
    ("ask-light", "ask", 0.15, 40), ("ask-saturating", "ask", 2.0, 15),
    ("type-light", "type", 0.05, 40), ("type-saturating", "type", 0.6, 15),
)
ANSWER_MAX_TOKENS = 64
TYPED = "The scheduler runs every heavy computation on one worker thread."


def loadtest(url: str, workload: str, rate: float, duration: float, out: Path) -> dict:
    texts = out.with_suffix(".txt")
    texts.write_text(TYPED + "\n")
    subprocess.run([str(BIN / "smallfirst"), "loadtest", "--url", url, "--workload", workload, "--rate", str(rate),
                    "--duration", str(duration), "--warmup", "2", "--texts", str(texts), "--json", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["summary"][workload]


def direct(data_dir: str) -> dict[str, float]:
    """The same prompts on llama-cpp-python, with the same context settings and prefix reuse."""
    from llama_cpp import Llama

    from smallfirst.retrieval.context import assemble_context
    from smallfirst.retrieval.embedder import Embedder
    from smallfirst.settings import Settings
    from smallfirst.retrieval.store import VectorStore
    from smallfirst.service.llm.keystroke_model import keystroke_model
    from smallfirst.service.llm.loading import Tokenizer, bundled_model_path
    from smallfirst.service.llm.prompts import ANSWER_STOPS, answer_prompt
    from smallfirst.service.tools.loadtest.cli import DEFAULT_QUESTIONS

    settings = Settings.load({"SMALLFIRST_DATA_DIR": data_dir})
    path = bundled_model_path()
    embedder = Embedder()
    store = VectorStore.open(settings.collection, embedder.dimension, path=settings.qdrant_path)
    tokenizer = Tokenizer(path)
    prompts = []
    for question in DEFAULT_QUESTIONS:
        hits = store.search(embedder.embed_query(question), settings.top_k)
        context = assemble_context(hits, settings.context_tokens, tokenizer.count, settings.min_score)
        prompts.append(answer_prompt(context.text, question))
    store.close()
    threads = os.cpu_count() or 1
    llm = Llama(str(path), n_ctx=settings.answer_ctx, n_threads=threads, n_threads_batch=threads, swa_full=True,
                flash_attn=True, verbose=False)
    ttft, tps = [], []
    for prompt in prompts * 2:
        started = time.perf_counter()
        times = []
        for _ in llm.create_completion(prompt, max_tokens=ANSWER_MAX_TOKENS, temperature=settings.answer_temperature,
                                       stop=list(ANSWER_STOPS), stream=True):
            times.append(time.perf_counter())
        ttft.append((times[0] - started) * 1000)
        if len(times) > 2:
            tps.append((len(times) - 1) / (times[-1] - times[0]))
    llm.close()
    keys_path = keystroke_model(path) if settings.complete_fast_output else path  # the file the service's keystrokes run on
    llm = Llama(str(keys_path), n_ctx=settings.answer_ctx, n_threads=threads, n_threads_batch=threads, swa_full=True,
                flash_attn=True, verbose=False)
    keys = []
    for i in range(10, len(TYPED) + 1):
        started = time.perf_counter()
        for _ in llm.create_completion(TYPED[:i], max_tokens=1, temperature=0.0, stream=True):
            keys.append((time.perf_counter() - started) * 1000)
            break
    return {"ask_ttft_ms": statistics.median(ttft), "decode_tps": statistics.median(tps),
            "keystroke_ttft_ms": statistics.median(keys)}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_env(tmp, SMALLFIRST_ANSWER_MAX_TOKENS=str(ANSWER_MAX_TOKENS))
        ingest(ROOT / "docs", env)
        results = {}
        with service(env) as port:
            for name, workload, rate, duration in RUNS:
                results[name] = loadtest(f"ws://127.0.0.1:{port}/ws", workload, rate, duration, Path(tmp) / f"{name}.json")
        baseline = direct(tmp)
    for name, s in results.items():
        extra = f" delivered {s.get('delivered')} stale {s.get('stale_dropped')}" if "delivered" in s else ""
        print(f"{name:>16}: sent {s['sent']} done {s['completed']} errors {sum(s['errors'].values())} "
              f"ttft p50/p95/p99 {s['ttft_ms']['p50']}/{s['ttft_ms']['p95']}/{s['ttft_ms']['p99']} ms "
              f"itl p50 {s['itl_ms']['p50']} ms tok/s {s['tokens_per_s']} goodput {s['goodput']}{extra}")
    print(f"direct llama-cpp-python: ask ttft p50 {baseline['ask_ttft_ms']:.1f} ms, decode {baseline['decode_tps']:.1f} tok/s, "
          f"keystroke ttft p50 {baseline['keystroke_ttft_ms']:.1f} ms")
    light, typing = results["ask-light"], results["type-light"]
    service_tps = 1000 / light["itl_ms"]["p50"] if light["itl_ms"]["p50"] else float("nan")
    print(
        f"loadtest ask_light_ttft_p50_ms={light['ttft_ms']['p50']} ask_ttft_vs_direct={light['ttft_ms']['p50'] / baseline['ask_ttft_ms']:.2f} "
        f"decode_tps_vs_direct={service_tps / baseline['decode_tps']:.2f} "
        f"type_light_ttft_p50_ms={typing['ttft_ms']['p50']} type_ttft_vs_direct={typing['ttft_ms']['p50'] / baseline['keystroke_ttft_ms']:.2f} "
        f"ask_saturating_ttft_p95_ms={results['ask-saturating']['ttft_ms']['p95']} "
        f"type_saturating_ttft_p95_ms={results['type-saturating']['ttft_ms']['p95']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
