"""Autocomplete quality: are the suggestions right, and worth a Tab? smallfirst against the raw
model on the same held-out sentences, in one run.

For each corpus pair, one corpus is ingested and the other is not. Sentences are sampled from
both (seeded) and typed to a point: half right after a space, half inside a word. Each typed
prefix gets one suggestion from the service (over the WebSocket protocol, one request at a time,
grounding and copying on), typed a word at a time as a person would and also sent cold in one
request, and one from the raw model (llama-cpp-python on the same GGUF, the
typed text with its trailing space removed, greedy, no grounding: what a user would get from the
model directly). Each suggestion is compared with the sentence's true continuation:
- next word: the word at the cursor (finished, or the next one after a space) is right;
- two words: that word and the one after it are right;
- Tab chars: characters of the suggestion that agree with the true continuation, from its start
  (what a Tab would accept rightly), on average;
- junk: the suggestion is empty, has no letter, or is a short pattern repeated.

Corpora come from Debian documentation packages, copied from the installed package, marked
``dev`` (looked at, tuned on) or ``test`` (reported only):
- dev: python3.11-doc's tutorial ingested; docs/ (this project's sample corpus) as other text.
- test: debian-reference-en ingested; git-doc's user manual and howtos as other text.
(`apt-get install python3.11-doc debian-reference-en git-doc`.) The service and the raw model
never run at once. Figures last, one plain line per corpus pair.

    python bench/autocomplete_quality_bench.py [--sets dev,test] [--per-kind 50] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets

from harness import ROOT, bench_env, ingest, service

sys.path.insert(0, str(ROOT))

from smallfirst.ingest.loaders import load_document  # noqa: E402
from smallfirst.service.llm.loading import bundled_model_path  # noqa: E402

PYDOC_TUTORIAL = Path("/usr/share/doc/python3.11/html/tutorial")
DEBIAN_REFERENCE = Path("/usr/share/doc/debian-reference-en/docs")
GIT_DOC = Path("/usr/share/doc/git/html")
GIT_PAGES = ("user-manual.html", "gittutorial.html", "gittutorial-2.html", "everyday.html", "gitcore-tutorial.html",
             "howto")
MAX_TOKENS = 8
WORD_PAUSE_S = 0.3
SEED = 20261206


@dataclass(frozen=True)
class Pair:
    role: str  # dev or test
    held: str  # ingested corpus
    other: str  # never ingested


PAIRS = {
    "dev": Pair("dev", "pydoc-tutorial", "smallfirst-docs"),
    "test": Pair("test", "debian-reference", "git-doc"),
}


def corpus(name: str, dest: Path) -> Path:
    """Copy a corpus from its installed package (or the repository) under ``dest``."""
    target = dest / name
    if target.is_dir():
        return target
    if name == "pydoc-tutorial":
        source: Path | list[Path] = PYDOC_TUTORIAL
    elif name == "debian-reference":
        source = DEBIAN_REFERENCE
    elif name == "git-doc":
        source = [GIT_DOC / page for page in GIT_PAGES]
    else:
        source = ROOT / "docs"
    sources = source if isinstance(source, list) else [source]
    if not all(s.exists() for s in sources):
        raise SystemExit(f"{name}: {sources[0]} is missing (apt-get install python3.11-doc debian-reference-en git-doc)")
    target.mkdir(parents=True)
    for s in sources:
        if s.is_dir():
            shutil.copytree(s, target / s.name, dirs_exist_ok=True)
        else:
            shutil.copy2(s, target / s.name)
    return target


def sentences(folder: Path) -> list[str]:
    """Prose sentences of a corpus: 8 to 40 words, mostly letters, no markup or code."""
    found: list[str] = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in (".html", ".htm", ".md", ".txt") or not path.is_file():
            continue
        try:
            text = load_document(path, path.read_bytes()).text
        except Exception:
            continue
        for paragraph in re.split(r"\n\s*\n", text):
            flat = " ".join(paragraph.split())
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
                words = sentence.split()
                letters = sum(ch.isalpha() for ch in sentence)
                if 8 <= len(words) <= 40 and letters >= 0.75 * len(sentence.replace(" ", "")) \
                        and not re.search(r"[<>{}|`$#\\]|\.\.\.|::", sentence) and sentence[-1] in ".!?":
                    found.append(sentence)
    return sorted(set(found))


@dataclass(frozen=True)
class Case:
    kind: str  # held or other
    typed: str
    truth: str  # the sentence's rest after ``typed``


def cases(pool: list[str], kind: str, count: int, rng: random.Random) -> list[Case]:
    """``count`` sentences typed to a point: half right after a space, half inside a word."""
    chosen = rng.sample(pool, min(count, len(pool)))
    out = []
    for n, sentence in enumerate(chosen):
        words = sentence.split(" ")
        at = rng.randrange(3, len(words) - 2)
        before = " ".join(words[:at]) + " "
        word = words[at]
        if n % 2 and len(word) >= 4 and word[:2].isalpha():
            cut = rng.randrange(1, len(word) - 2)
            typed = before + word[:cut]
        else:
            typed = before
        out.append(Case(kind, typed, sentence[len(typed):]))
    return out


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'()") for w in text.split()]


def cursor_words(typed: str, rest: str, n: int) -> list[str]:
    """The ``n`` words from the cursor on: the one being typed (finished by ``rest``), or the
    next ones after a space."""
    start = len(typed) - (len(typed) - len(typed.rstrip())) if typed[-1:].isspace() else typed.rfind(" ") + 1
    return _words((typed + rest)[start:])[:n]


def is_junk(suggestion: str) -> bool:
    text = suggestion.strip()
    return (not text or not any(ch.isalpha() for ch in text)
            or re.search(r"(.{1,4}?)\1{3,}", text) is not None)


def score(case: Case, suggestion: str) -> dict[str, Any]:
    truth_words = cursor_words(case.typed, case.truth, 2)
    said_words = cursor_words(case.typed, suggestion, 2) if suggestion else []
    tab = 0
    while tab < min(len(suggestion), len(case.truth)) and suggestion[tab] == case.truth[tab]:
        tab += 1
    junk = is_junk(suggestion)
    return {
        "next": bool(said_words) and not junk and said_words[:1] == truth_words[:1],
        "two": len(said_words) >= 2 and not junk and said_words[:2] == truth_words[:2],
        "tab": tab, "junk": junk,
    }


async def _complete(ws: Any, rid: str, text: str) -> str:
    await ws.send(json.dumps({"type": "complete", "id": rid, "text": text, "max_tokens": MAX_TOKENS}))
    got = ""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if frame.get("id") != rid:
            continue
        if frame["type"] == "token":
            got += frame["text"]
        elif frame["type"] in ("done", "error"):
            return got


async def service_suggestions(port: int, typed: list[str], typing: bool) -> list[str]:
    """One suggestion per typed prefix, each on a new connection (a new typist). ``typing``: the
    prefix is typed as a person would, a word at a time, each word's suggestion asked for and
    ``WORD_PAUSE_S`` apart (about one word at 6 characters a second is slower still), so the
    grounding lookups made off the keystroke path have run; else it arrives cold, in one request."""
    out = []
    for n, text in enumerate(typed):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            if typing:
                ends = [m.end() for m in re.finditer(r"\S+ ", text)]
                for k, end in enumerate(ends[2:]):
                    await _complete(ws, f"w{n}-{k}", text[:end])
                    await asyncio.sleep(WORD_PAUSE_S)
            out.append(await _complete(ws, f"c{n}", text))
    return out


def raw_suggestions(typed: list[str]) -> list[str]:
    """The raw model: the typed text, its trailing space removed, continued greedily."""
    from llama_cpp import Llama

    llm = Llama(str(bundled_model_path()), n_ctx=1024, n_threads=2, verbose=False)
    out = []
    for text in typed:
        prompt = text.rstrip(" ")
        result = llm.create_completion(prompt, max_tokens=MAX_TOKENS, temperature=0.0, stop=["\n"])
        completion = result["choices"][0]["text"]
        out.append(completion[len(text) - len(prompt):] if completion.startswith(" " * (len(text) - len(prompt)))
                   else completion)
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    n = len(rows) or 1
    return {"n": len(rows), "next": sum(r["next"] for r in rows) / n, "two": sum(r["two"] for r in rows) / n,
            "tab_chars": sum(r["tab"] for r in rows) / n, "junk": sum(r["junk"] for r in rows) / n}


def run_pair(pair: Pair, per_kind: int, work: Path) -> dict[str, Any]:
    rng = random.Random(f"{SEED}-{pair.role}")
    held_dir, other_dir = corpus(pair.held, work / "corpora"), corpus(pair.other, work / "corpora")
    all_cases = cases(sentences(held_dir), "held", per_kind, rng) + cases(sentences(other_dir), "other", per_kind, rng)
    env = bench_env(work / f"store-{pair.role}")
    ingest(held_dir, env)
    typed = [c.typed for c in all_cases]
    with service(env) as port:
        ours = asyncio.run(service_suggestions(port, typed, typing=True))
        cold = asyncio.run(service_suggestions(port, typed, typing=False))
    raw = raw_suggestions(typed)
    result: dict[str, Any] = {"role": pair.role, "held": pair.held, "other": pair.other, "samples": []}
    for name, suggestions in (("smallfirst", ours), ("cold", cold), ("raw", raw)):
        scored = [score(c, s) for c, s in zip(all_cases, suggestions)]
        for kind in ("held", "other"):
            result[f"{name}_{kind}"] = summarise([r for r, c in zip(scored, all_cases) if c.kind == kind])
    result["samples"] = [{"kind": c.kind, "typed": c.typed, "truth": c.truth, "smallfirst": o, "cold": k, "raw": r}
                         for c, o, k, r in zip(all_cases, ours, cold, raw)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="dev,test", help="Comma-separated: dev, test.")
    parser.add_argument("--per-kind", type=int, default=50, help="Sentences typed per kind (held, other).")
    parser.add_argument("--json", type=Path, default=None, help="Write every sample and figure here.")
    parser.add_argument("--work", type=Path, default=None, help="Keep corpora and stores here between runs.")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for role in args.sets.split(","):
            results.append(run_pair(PAIRS[role.strip()], args.per_kind, work))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    for r in results:
        line = [f"autocomplete_quality {r['role']} held={r['held']} other={r['other']}"]
        for kind in ("held", "other"):
            ours, cold, raw = r[f"smallfirst_{kind}"], r[f"cold_{kind}"], r[f"raw_{kind}"]
            line.append(f"{kind}: next {ours['next']:.2f} (cold {cold['next']:.2f}, raw {raw['next']:.2f}) "
                        f"two {ours['two']:.2f} (cold {cold['two']:.2f}, raw {raw['two']:.2f}) "
                        f"tab_chars {ours['tab_chars']:.1f} (cold {cold['tab_chars']:.1f}, raw {raw['tab_chars']:.1f}) "
                        f"junk {ours['junk']:.2f} (cold {cold['junk']:.2f}, raw {raw['junk']:.2f}) n={ours['n']}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
