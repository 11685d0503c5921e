"""Prompt frames for a base (text-continuation) model.

The frame is laid out so that what changes least comes first: the instructions and the worked
example (identical for every request, so they stay in the KV cache), then the retrieved
sources, then the question. Retrieved text is fenced between ``<<<`` and ``>>>`` as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from smallfirst.retrieval.evidence import EvidenceSet

ANSWER_STOPS = ("\n\n", "\nQuestion:", "\nSources:", "<<<", ">>>")

_ANSWER_FRAME = """Below are questions answered from numbered sources. Each answer uses only facts stated in the sources, cites them like [1], and says "The documents do not say." when the sources do not contain the answer.

Sources:
<<<
[1] Lighthouse guide › Opening hours
The lighthouse museum opens at 9:00 and closes at 17:00 from April to October. It is closed in winter.
>>>
Question: When does the lighthouse museum close in summer?
Answer: It closes at 17:00 from April to October [1].

###

Sources:
<<<
{sources}
>>>
Question: {question}
Answer:"""

_NO_SOURCES = "(no sources matched the question)"


def answer_prompt(sources: str, question: str) -> str:
    """The few-shot frame for a grounded answer."""
    return _ANSWER_FRAME.format(sources=sources.strip() or _NO_SOURCES, question=" ".join(question.split()))


@dataclass(frozen=True)
class PassagePrompt:
    """An answer prompt and the character spans of its passages: one per source block, each with
    the blank line after it, laid end to end from the frame's ``<<<`` line to the closing ``>>>``.
    The answer model keeps each passage's KV state apart, so a later prompt holding the same
    passage need not evaluate it again (see :mod:`smallfirst.service.llm.kv_cache`)."""

    text: str
    passages: tuple[tuple[int, int], ...]


def evidence_prompt(evidence: EvidenceSet, question: str, windows: int) -> str:
    """The small tier's answer prompt: the ``windows`` best evidence sentences in the frame.
    The service and distillation's training data both build it here."""
    return evidence_passage_prompt(evidence, question, windows).text


def evidence_passage_prompt(evidence: EvidenceSet, question: str, windows: int) -> PassagePrompt:
    """:func:`evidence_prompt` with the spans of its source blocks."""
    return passage_prompt(evidence.window_blocks(windows), question)


def passage_prompt(blocks: Sequence[str], question: str) -> PassagePrompt:
    """The answer frame around source ``blocks`` (one numbered source each), with their spans."""
    text = answer_prompt("\n\n".join(blocks), question)
    start = _ANSWER_FRAME.index("{sources}")
    spans = []
    for i, block in enumerate(blocks):
        piece = block + ("\n\n" if i + 1 < len(blocks) else "")
        if text[start:start + len(piece)] != piece:  # stripped at the edges: no passages, one plain prompt
            return PassagePrompt(text, ())
        spans.append((start, start + len(piece)))
        start += len(piece)
    return PassagePrompt(text, tuple(spans))


def complete_window_start(length: int, window_chars: int = 1500, step_chars: int = 500) -> int:
    """Where the continued text starts: its last ``window_chars`` or fewer, cut at a position
    that moves in steps of ``step_chars``.

    Cutting at a stepped position (rather than always the last ``window_chars``) keeps the
    start of the prompt identical from one keystroke to the next, so the KV prefix is reused.
    """
    if length <= window_chars:
        return 0
    return ((length - window_chars) // step_chars + 1) * step_chars


def complete_prompt(text: str) -> str:
    """The text to continue: its tail from :func:`complete_window_start`."""
    return text[complete_window_start(len(text)):]


NOT_COVERED = "The documents do not cover this question."


def large_prompt(sources: str, question: str) -> str:
    """The user message for the large tier: the fenced sources (when sent) and the question."""
    question = " ".join(question.split())
    if not sources.strip():
        return f"Question: {question}"
    return f"Sources:\n<<<\n{sources.strip()}\n>>>\n\nQuestion: {question}"
