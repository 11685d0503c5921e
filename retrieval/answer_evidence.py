"""The evidence an answer is drawn from, the same wherever it is built (the service, distillation
and the benches): every sentence of the hits scored for the question, and for a question that
asks for a name, the sentences that give one first."""

from __future__ import annotations

from typing import Sequence

from smallfirst.retrieval.evidence import EmbedTexts, EvidenceSet, find_evidence
from smallfirst.retrieval.expectation import names_first
from smallfirst.retrieval.store import Hit


def answer_evidence(question: str, hits: Sequence[Hit], embed: EmbedTexts | None) -> EvidenceSet:
    """The scored evidence for ``question`` from ``hits`` (see :func:`~smallfirst.retrieval.evidence.find_evidence`
    and :func:`~smallfirst.retrieval.expectation.names_first`)."""
    return names_first(question, find_evidence(question, hits, embed))
