"""Answer quality and trust on every QA set: `smallfirst eval` against a real service and a stand-in large tier.

    python bench/eval_bench.py [--sets docs,pydoc,...] [--store-cache DIR] [--out FILE]

For each set (bench/qa_sets.py names them, their corpora and whether each is dev or test):
ingest its corpus into a store (kept in ``--store-cache`` between runs, with the copied corpus
beside it, so ingest is incremental), start `smallfirst serve` with greedy answers and the
stand-in large tier (`python -m llama_cpp.server` on the bundled model), run `smallfirst eval
--json`, and print one table per corpus with its split beside it. Figures to report come from
the test sets; the dev sets are for tuning. Prints the headline figures last, in one plain line.
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
from qa_sets import SETS as QA_SETS, copy_corpus

SETS = {name: qa_set.questions for name, qa_set in QA_SETS.items()}
FIRST_SETS = ("docs", "pydoc")  # the sets the older benches compare on


def pydoc_corpus(dest: Path) -> Path:
    """The python3.11-doc pages the pydoc QA set is about, copied under ``dest``."""
    return copy_corpus(QA_SETS["pydoc"], dest)


def set_corpus(name: str, cache: Path) -> Path:
    """A QA set's corpus. Copied pages live beside the cached stores: a new path each run would be
    a new document root to ingest, and the store would fill with copies of every chunk."""
    return ROOT / "docs" if name == "docs" else copy_corpus(QA_SETS[name], cache / "corpora" / name)


def store_cache_parser(doc: str | None) -> argparse.ArgumentParser:
    """A bench's command line with ``--store-cache``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-cache", type=Path, default=None, help="Keep the ingested stores here between runs.")
    return parser


@contextlib.contextmanager
def qa_corpora(store_cache: Path | None, names: tuple[str, ...] = FIRST_SETS) -> Iterator[list[tuple[str, Path, Path]]]:
    """Each named QA set's name, corpus and store folder, under ``store_cache`` or, without one, a
    temporary folder removed when the block ends."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = store_cache or Path(tmp)
        yield [(name, set_corpus(name, cache), cache / name) for name in names]


def large_tier() -> tuple[list[str], str]:
    """The stand-in large tier's command line and base URL."""
    sys.path.insert(0, str(ROOT))
    from smallfirst.service.llm.loading import bundled_model_path

    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()), "--model_alias",
               "stand-in-large", "--port", str(port), "--n_ctx", "2048", "--chat_format", "gemma"]
    return command, f"http://127.0.0.1:{port}/v1"


def evaluate(name: str, corpus: Path, store: Path, large_url: str | None, extra_env: dict[str, str] | None = None) -> dict:
    large = {"SMALLFIRST_LARGE_URL": large_url, "SMALLFIRST_LARGE_MODEL": "stand-in-large",
             "SMALLFIRST_LARGE_MAX_TOKENS": "80"} if large_url else {}
    env = bench_env(store, SMALLFIRST_ANSWER_TEMPERATURE="0", **large, **(extra_env or {}))
    ingest(corpus, env)
    with service(env, timeout_s=300) as port:
        result = subprocess.run(
            [str(BIN / "smallfirst"), "eval", str(SETS[name]), "--url", f"ws://127.0.0.1:{port}/ws", "--json"],
            env=env, check=True, capture_output=True, text=True,
        )
    return json.loads(result.stdout)


HEADLINE = ("grounded_small_first", "grounded_small_accuracy", "small_accuracy", "check_precision", "check_recall", "check_false_alarms",
            "ungrounded_hard_escalated", "source_hit_rate", "sources_ms_p50", "first_token_ms_p50_small")


def report(name: str, result: dict) -> str:
    """One corpus's table: the headline figures, the operating point and the curve; returns its plain line."""
    s = result["summary"]
    split = QA_SETS[name].split
    print(f"== {name} ({split}): {s['questions']} questions")
    for key in HEADLINE + ("small_accuracy_by_shape", "picked", "escalations"):
        print(f"{key:>28}: {s.get(key)}")
    point = s["operating_point"]
    print(f"{'operating point':>28}: coverage {point['coverage']} precision {point['precision']}")
    curve = result.get("curve") or []
    for p in curve[::max(1, len(curve) // 8)]:
        print(f"{'':>28}  threshold {p['threshold']:.3f} coverage {p['coverage']:.3f} precision {p['precision']:.3f}")
    return (f"{name}[{split}]: small_right={s['grounded_small_accuracy']} supported_right={point['precision']} "
            f"coverage={point['coverage']} escalated_offtopic_hard={s['ungrounded_hard_escalated']} "
            f"small_first={s['grounded_small_first']} sources_p50_ms={s['sources_ms_p50']} "
            f"ttft_small_p50_ms={s['first_token_ms_p50_small']}")


def main() -> int:
    parser = store_cache_parser(__doc__)
    parser.add_argument("--sets", default=",".join(QA_SETS), help="Comma-separated QA sets (default: all).")
    parser.add_argument("--out", type=Path, default=None, help="Write every outcome as JSON here.")
    parser.add_argument("--no-large", action="store_true",
                        help="Run without a large tier: the small tier's answers and the check's figures are the same, "
                             "and escalations are not waited for.")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="A setting for the service, e.g. SMALLFIRST_ANSWER_PICK=false (repeatable).")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in QA_SETS]
    if unknown:
        parser.error(f"unknown sets {unknown}; known: {', '.join(QA_SETS)}")
    results: dict[str, dict] = {}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.store_cache or Path(tmp) / "stores"
        command, large_url = large_tier()
        stand_in = contextlib.nullcontext() if args.no_large else \
            running(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, f"{large_url}/models", "the large tier", 120)
        with stand_in:
            for name in names:
                results[name] = evaluate(name, set_corpus(name, cache), cache / name, None if args.no_large else large_url, extra_env)
                if args.out:
                    args.out.write_text(json.dumps(results, indent=1))
                lines.append(report(name, results[name]))
    print(" | ".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
