"""Answer quality and trust on both QA sets: `smallfirst eval` against a real service and a stand-in large tier.

    python bench/eval_bench.py [--sets docs,pydoc] [--store-cache DIR] [--out FILE]

For each set: ingest its corpus into a store (kept in ``--store-cache`` between runs, with the
copied pydoc corpus beside it, so ingest is incremental), start `smallfirst serve` with greedy answers and the stand-in large tier
(`python -m llama_cpp.server` on the bundled model), run `smallfirst eval --json`, and print
the summary. Corpora: ``docs/`` for bench/qa/docs.jsonl; Debian's python3.11-doc tutorial,
howto and five library pages for bench/qa/pydoc.jsonl (`apt-get install python3.11-doc`).
Prints the headline figures last, in one plain line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from harness import BIN, ROOT, bench_env, free_port, ingest, running, service

PYDOC = Path("/usr/share/doc/python3.11/html")
PYDOC_LIBRARY = ("json", "pathlib", "itertools", "functools", "collections")
SETS = {"docs": ROOT / "bench" / "qa" / "docs.jsonl", "pydoc": ROOT / "bench" / "qa" / "pydoc.jsonl"}


def pydoc_corpus(dest: Path) -> Path:
    """The python3.11-doc pages the pydoc QA set is about, copied under ``dest``."""
    import shutil

    if not PYDOC.is_dir():
        raise SystemExit(f"{PYDOC} is missing: apt-get install python3.11-doc")
    for part in ("tutorial", "howto"):
        shutil.copytree(PYDOC / part, dest / part, dirs_exist_ok=True)
    (dest / "library").mkdir(parents=True, exist_ok=True)
    for name in PYDOC_LIBRARY:
        shutil.copy2(PYDOC / "library" / f"{name}.html", dest / "library" / f"{name}.html")
    return dest


def set_corpus(name: str, cache: Path) -> Path:
    """A QA set's corpus. The copied pydoc pages live beside the cached stores: a new path each run
    would be a new document root to ingest, and the store would fill with copies of every chunk."""
    return ROOT / "docs" if name == "docs" else pydoc_corpus(cache / "corpora" / "pydoc")


def store_cache_parser(doc: str | None) -> argparse.ArgumentParser:
    """A bench's command line with ``--store-cache``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-cache", type=Path, default=None, help="Keep the ingested stores here between runs.")
    return parser


@contextlib.contextmanager
def qa_corpora(store_cache: Path | None) -> Iterator[list[tuple[str, Path, Path]]]:
    """Each QA set's name, corpus and store folder, under ``store_cache`` or, without one, a
    temporary folder removed when the block ends."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = store_cache or Path(tmp)
        yield [(name, set_corpus(name, cache), cache / name) for name in SETS]


def large_tier() -> tuple[list[str], str]:
    """The stand-in large tier's command line and base URL."""
    sys.path.insert(0, str(ROOT))
    from smallfirst.service.llm.local import bundled_model_path

    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()), "--model_alias",
               "stand-in-large", "--port", str(port), "--n_ctx", "2048", "--chat_format", "gemma"]
    return command, f"http://127.0.0.1:{port}/v1"


def evaluate(name: str, corpus: Path, store: Path, large_url: str) -> dict:
    env = bench_env(store, SMALLFIRST_LARGE_URL=large_url, SMALLFIRST_LARGE_MODEL="stand-in-large",
                    SMALLFIRST_LARGE_MAX_TOKENS="80", SMALLFIRST_ANSWER_TEMPERATURE="0")
    ingest(corpus, env)
    with service(env, timeout_s=300) as port:
        result = subprocess.run(
            [str(BIN / "smallfirst"), "eval", str(SETS[name]), "--url", f"ws://127.0.0.1:{port}/ws", "--json"],
            env=env, check=True, capture_output=True, text=True,
        )
    return json.loads(result.stdout)


def main() -> int:
    parser = store_cache_parser(__doc__)
    parser.add_argument("--sets", default="docs,pydoc")
    parser.add_argument("--out", type=Path, default=None, help="Write every outcome as JSON here.")
    args = parser.parse_args()
    names = [n for n in args.sets.split(",") if n]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.store_cache or Path(tmp) / "stores"
        command, large_url = large_tier()
        with running(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, f"{large_url}/models", "the large tier", 120):
            for name in names:
                results[name] = evaluate(name, set_corpus(name, cache), cache / name, large_url)
                if args.out:
                    args.out.write_text(json.dumps(results, indent=1))
                print(f"== {name}")
                for key, value in results[name]["summary"].items():
                    print(f"{key:>28}: {value}", flush=True)
    line = []
    for name, result in results.items():
        s = result["summary"]
        line.append(f"{name}: grounded_small_first={s.get('grounded_small_first')} small_accuracy={s.get('small_accuracy')} "
                    f"check_precision={s.get('check_precision')} check_recall={s.get('check_recall')} "
                    f"false_alarms={s.get('check_false_alarms')} sources_p50_ms={s.get('sources_ms_p50')} "
                    f"ttft_small_p50_ms={s.get('first_token_ms_p50_small')}")
    print(" | ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
