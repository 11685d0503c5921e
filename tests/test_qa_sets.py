"""The QA sets stay held out: no question or id of theirs in the code or its tests, and every
question checked against its pages."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("tests", "retrieval", "service", "ingest", "web", "smallfirst")
TEXT_SUFFIXES = {".py", ".json", ".jsonl", ".md", ".js", ".html", ".txt", ".toml", ".yaml", ".yml"}


def _qa_sets():
    spec = importlib.util.spec_from_file_location("qa_sets", ROOT / "bench" / "qa_sets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("qa_sets", module)
    spec.loader.exec_module(module)
    return module


def _flat(text: str) -> str:
    return " ".join(text.lower().split())


def _rows() -> list[dict]:
    return [json.loads(line) for path in sorted((ROOT / "bench" / "qa").glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _code_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        base = ROOT / folder  # rglob does not follow the links in smallfirst/ back to the folders scanned here
        files += [p for p in base.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return files


def leaks(rows: list[dict], files: list[Path], base: Path = ROOT) -> list[str]:
    """Each QA question (its text, without the question mark) or id that stands in one of ``files``.

    A file can hold a question only if it holds each of the question's inner words as a word of
    its own (the first and last may be cut), and it names an id only as a whole token: so the
    substring search runs only on the files that pass, and ids are looked up in a set."""
    texts = {path: _flat(path.read_text(encoding="utf-8", errors="replace")) for path in files}
    words = {path: set(text.split(" ")) for path, text in texts.items()}
    tokens = {path: set(re.findall(r"[\w-]+", text)) for path, text in texts.items()}
    found = []
    for row in rows:
        question = _flat(row["question"]).rstrip("?. ")
        inner = set(question.split(" ")[1:-1])
        row_id = str(row["id"]).lower()
        for path, text in texts.items():
            if len(question) >= 20 and inner <= words[path] and question in text:
                found.append(f"{path.relative_to(base)} quotes {row['id']}: {row['question']!r}")
            if row_id in tokens[path]:
                found.append(f"{path.relative_to(base)} names {row['id']}")
    return found


def test_no_qa_question_or_id_stands_in_the_code_or_its_tests():
    assert not leaks(_rows(), _code_files())


def test_the_leak_check_finds_a_quoted_question_and_an_id(tmp_path):
    row = _rows()[0]
    quoted = tmp_path / "quoted.py"
    quoted.write_text(f'QUESTION = """{row["question"].upper()}"""\n')
    named = tmp_path / "named.py"
    named.write_text(f'CASE = "{row["id"]}"\n')
    clean = tmp_path / "clean.py"
    clean.write_text('CASE = "a question of its own about a lighthouse keeper?"\n')
    found = leaks([row], [quoted, named, clean], tmp_path)
    assert len(found) == 2 and "quoted.py" in found[0] and "named.py" in found[1], found


def test_the_sets_are_split_by_corpus_with_enough_questions_of_every_shape():
    qa_sets = _qa_sets()
    sets = qa_sets.SETS.values()
    rows = {s.name: qa_sets.load(s) for s in sets}
    assert len(rows) >= 5 and sum(len(r) for r in rows.values()) >= 600
    assert {s.name for s in sets if s.split == "dev"} >= {"docs", "pydoc"}
    assert sum(s.split == "test" for s in sets) >= 2 and {s.split for s in sets} == {"dev", "test"}
    ids = [row["id"] for r in rows.values() for row in r]
    assert len(ids) == len(set(ids))
    for qa_set in sets:
        grounded = [row for row in rows[qa_set.name] if row["kind"] == "grounded"]
        if qa_set.split == "test":
            shapes = {row["shape"] for row in grounded}
            assert shapes == set(qa_set_shapes()), (qa_set.name, shapes)
        assert any(row["kind"] != "grounded" for row in rows[qa_set.name]), qa_set.name


def qa_set_shapes() -> tuple[str, ...]:
    return _qa_sets().SHAPES


@pytest.mark.slow
@pytest.mark.parametrize("name", ["docs", "pydoc", "apache", "handbook", "git"])
def test_every_question_of_a_set_is_checked_against_its_pages(name):
    qa_sets = _qa_sets()
    qa_set = qa_sets.SETS[name]
    missing = [str(source) for source, _ in qa_set.pages() if not source.is_file()]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing[0]} is missing: apt-get install {qa_set.package}")
        pytest.skip(f"apt-get install {qa_set.package}")
    assert qa_sets.check(qa_set) == []


@pytest.mark.slow
def test_the_checker_refuses_an_answer_the_page_does_not_hold_and_a_question_in_the_pages_words():
    qa_sets = _qa_sets()
    qa_set = qa_sets.SETS["docs"]
    texts = qa_sets.page_texts(qa_set)
    runs = {name: qa_sets._runs(qa_sets._words(text), qa_sets.COPIED_WORDS) for name, text in texts.items()}
    page, sentence = next((name, sentence) for name, text in sorted(texts.items()) for sentence in text.split(". ")
                          if re.fullmatch(r"[a-z ]+", sentence) and len(sentence.split()) >= 12)
    words = sentence.split()
    good = {"id": "docs-x1", "question": "Something asked in other words entirely?", "kind": "grounded",
            "shape": "description", "pages": [page], "answer_any": [" ".join(words[2:5])], "evidence": sentence}
    assert qa_sets.check_row(good, qa_set, texts, runs) == []
    invented = {**good, "answer_any": ["a figure no page of the bundled docs states 97531"]}
    assert any("not in its pages" in p for p in qa_sets.check_row(invented, qa_set, texts, runs))
    copied = {**good, "question": " ".join(words[:9]) + "?"}
    assert any("copies the page's words" in p for p in qa_sets.check_row(copied, qa_set, texts, runs))
    unsourced = {**good, "evidence": "a sentence that stands in no page of the corpus at all"}
    assert any("evidence not found" in p for p in qa_sets.check_row(unsourced, qa_set, texts, runs))
