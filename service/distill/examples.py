"""Teacher data -> training examples: the small tier's prompt for each logged question and sources,
and the large tier's answer as the target, filtered and split.

The prompt is rebuilt with today's code (evidence scoring, windows, frame), not copied from the
log, so an adapter always learns the prompt format the service now serves.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson

from smallfirst.retrieval.answer_evidence import answer_evidence
from smallfirst.retrieval.evidence import EmbedTexts, EvidenceSet
from smallfirst.retrieval.store import Hit
from smallfirst.retrieval.support import check_answer
from smallfirst.service.llm.prompts import ANSWER_STOPS, evidence_prompt

_BLANK_LINES = re.compile(r"\n\s*\n+")


@dataclass(frozen=True)
class Example:
    """One training pair: what the small tier is given, and what the teacher answered."""

    question: str
    prompt: str
    target: str  # the teacher's answer, as the small tier should continue the prompt
    hits: tuple[Hit, ...]
    evidence: EvidenceSet  # the sources' scored sentences, as the service scores them


@dataclass
class Tally:
    """What became of the logged lines."""

    lines: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}


def _hit(record: Any) -> Hit:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError("a source without text")
    return Hit(
        id=str(record.get("id", "")), score=float(record.get("score", 0.0)), doc_id=str(record.get("doc_id", "")),
        doc_version=str(record.get("doc_version", "")), chunk_index=int(record.get("chunk_index", 0)),
        title=str(record.get("title", "")), uri=str(record.get("uri", "")), text=record["text"],
        page=record.get("page"), language=record.get("language"),
    )


def read_log(paths: Sequence[Path], tally: Tally) -> Iterator[dict[str, Any]]:
    """The logged entries, in order; a line that is not a JSON object is counted and skipped."""
    for path in paths:
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                tally.lines += 1
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    tally.dropped["not_json"] += 1
                    continue
                if not isinstance(entry, dict):
                    tally.dropped["not_json"] += 1
                    continue
                yield entry


def clean_target(answer: str) -> str:
    """The teacher's text as one continuation: blank lines (the small tier's stop) become single
    newlines, and fence markers go."""
    text = _BLANK_LINES.sub("\n", answer.strip())
    for stop in ANSWER_STOPS[1:]:
        text = text.replace(stop.strip(), "")
    return " ".join(text.split(" ")).strip()


def build_example(entry: dict[str, Any], embed: EmbedTexts | None, windows: int) -> tuple[Example | None, str]:
    """One logged entry as an example, or None and why it was dropped."""
    question, answer = entry.get("question"), entry.get("answer")
    if not isinstance(question, str) or not question.strip() or not isinstance(answer, str):
        return None, "malformed"
    records = entry.get("sources")
    if not isinstance(records, list) or not records:
        return None, "no_sources"
    try:
        hits = tuple(_hit(r) for r in records)
    except (ValueError, TypeError):
        return None, "malformed"
    target = clean_target(answer)
    if not target:
        return None, "empty"
    evidence: EvidenceSet = answer_evidence(question, hits, embed)
    verdict = check_answer(question, target, evidence.ranked, [h.text for h in hits])
    if not verdict.supported:
        why = verdict.unsupported[0]["why"] if verdict.unsupported else ""
        return None, "refused" if "do not answer" in str(why) else "unsupported"
    return Example(" ".join(question.split()), evidence_prompt(evidence, question, windows), target, hits, evidence), ""


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def collect(paths: Sequence[Path], embed: EmbedTexts | None, windows: int, max_examples: int | None = None) -> tuple[list[Example], Tally]:
    """Every usable example of the logs, duplicates (same question, same answer) dropped."""
    tally = Tally()
    seen: set[tuple[str, str]] = set()
    examples: list[Example] = []
    for entry in read_log(paths, tally):
        key = (_key(str(entry.get("question", ""))), _key(str(entry.get("answer", ""))))
        if key in seen:
            tally.dropped["duplicate"] += 1
            continue
        seen.add(key)
        if max_examples is not None and len(examples) >= max_examples:
            tally.dropped["over_max_examples"] += 1  # counted, not built: the rest of a large log costs nothing
            continue
        example, why = build_example(entry, embed, windows)
        if example is None:
            tally.dropped[why] += 1
            continue
        examples.append(example)
    tally.kept = len(examples)
    return examples, tally


def split(examples: Sequence[Example], holdout: float) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples, by a hash of the question: the same question always lands
    on the same side, so no question is both trained on and evaluated, and reruns agree."""
    train: list[Example] = []
    held: list[Example] = []
    for example in examples:
        digest = hashlib.sha256(_key(example.question).encode("utf-8")).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < holdout else train).append(example)
    if not held and len(train) >= 2 and holdout > 0:
        held.append(train.pop())
    return train, held
