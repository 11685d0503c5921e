"""Evidence: the sentence or two of each retrieved chunk that best answer the question.

A chunk is cut into sentences with their character offsets. Each sentence is scored together
with its *label*, the nearest heading or term line above it (``name (type)`` lines above a
setting's description, a function signature above its docs): lexically with BM25 over the
candidate sentences, and semantically with the cosine between the question's vector and the
sentence's (cheap vectors: the embedding model's token embeddings, averaged). The two scores,
each scaled to its best, are mixed with fixed weights, and then with the search score of the
sentence's chunk, scaled likewise.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from smallfirst.retrieval.store import Hit

EmbedTexts = Callable[[Sequence[str]], np.ndarray]

MAX_CHUNK_CHARS = 6000  # longer chunks are read only this far: the scorer stays cheap
MAX_SENTENCE_CHARS = 400
LEXICAL_WEIGHT = 0.7
# How much a sentence's chunk's own search score (relative to the best chunk's) weighs against the
# sentence's: among eight chunks, a far one's sentence that merely shares the question's words
# should not outrank the best chunk's. Measured on both QA sets with 0, 0.5 and 1.
CHUNK_WEIGHT = 0.5
EXTEND_RATIO = 0.85  # the next sentence joins the evidence when it scores this close to the best

_WORD = re.compile(r"[a-z0-9_]+(?:[.-][a-z0-9_]+)*")
# A sentence ends at . ! ? followed by space and a capital, a digit, a quote or a bracket;
# "e.g. this" and "3.5" stay whole.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\betc\.)(?<!\bvs\.)\s+(?=[\"'(\[`A-Z0-9])")
_CRUMB = " › "
_TITLE_END = re.compile(r"\s+[—–|-]\s+[^—–|]*$")  # " — Python 3.11.2 documentation" in "9. Classes — Python …"

STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with from into onto over under as is are was were be been
being am do does did done doing have has had having it its it's this that these those there here what which who whom
whose when where why how can could should would will shall may might must not no yes so than too very just also
about above after again all any both each few more most other some such only own same i me my we our you your he
him his she her they them their one s t
""".split())


def words(text: str) -> list[str]:
    """Lower-case word tokens; dotted and hyphenated names (``os.path``, ``max-tokens``) stay whole."""
    return _WORD.findall(text.lower())


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def content_words(text: str) -> list[str]:
    """:func:`words` without stop words, with a plural ``s`` dropped; a compound name
    (``complete_slots``, ``os.path``) also counts as its parts."""
    out = []
    for word in words(text):
        if word in STOPWORDS:
            continue
        out.append(_singular(word))
        if any(c in word for c in "_.-"):
            out.extend(_singular(part) for part in re.split(r"[_.-]+", word) if part and part not in STOPWORDS)
    return out


@dataclass(frozen=True)
class Sentence:
    """One sentence of a retrieved chunk, with offsets into the chunk's text."""

    source: int  # index of the hit in the list scored
    start: int
    end: int
    label: str  # the nearest heading or term line above it ("" when none)
    text: str
    previous: str  # the sentence before it in the same chunk ("" when none)
    following: str  # the sentence after it ("" when none)

    @property
    def scored_text(self) -> str:
        return f"{self.label}: {self.text}" if self.label else self.text


@dataclass(frozen=True)
class Evidence:
    """The best evidence of one source: its text and offsets in the chunk, and its score."""

    source: int
    start: int
    end: int
    text: str
    score: float
    sentence: Sentence
    index: int  # the sentence's position in the scored list

    def window(self) -> str:
        """The evidence with its label and neighbouring sentences, as the prompt shows it."""
        parts = [self.sentence.previous, self.text, self.sentence.following if self.text == self.sentence.text else ""]
        body = " ".join(p for p in parts if p)
        return f"{self.sentence.label}\n{body}" if self.sentence.label else body

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "start": self.start, "end": self.end, "score": round(self.score, 4)}


def _is_label(line: str) -> bool:
    """A heading, a breadcrumb, or a short term line without a sentence end (``port (int)``)."""
    stripped = line.strip()
    if not stripped:
        return False
    if stripped.startswith("#") or _CRUMB in stripped:
        return True
    return len(stripped) <= 100 and not stripped.endswith((".", "!", "?", ";", ","))


def _line_sentences(line: str, offset: int) -> list[tuple[int, int]]:
    """Sentence spans within one line (offsets into the chunk)."""
    spans = []
    start = 0
    for match in _SENTENCE_END.finditer(line):
        spans.append((offset + start, offset + match.start()))
        start = match.end()
    spans.append((offset + start, offset + len(line)))
    out = []
    for a, b in spans:
        while b - a > MAX_SENTENCE_CHARS:  # a run-on "sentence" (code, a table) is cut at spaces
            cut = line.rfind(" ", a - offset, a - offset + MAX_SENTENCE_CHARS)
            cut = offset + cut if cut > a - offset else a + MAX_SENTENCE_CHARS
            out.append((a, cut))
            a = cut + 1
        if line[a - offset: b - offset].strip():
            out.append((a, b))
    return out


def split_sentences(text: str, source: int = 0) -> list[Sentence]:
    """The chunk's sentences (labels included as their own sentences), each with its label."""
    text = text[:MAX_CHUNK_CHARS]
    raw: list[tuple[int, int, str]] = []  # start, end, label
    label = ""
    position = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        lead = len(body) - len(body.lstrip())
        stripped = body.strip()
        if stripped:
            if _is_label(stripped):
                label = stripped.lstrip("#").strip()
                if _CRUMB not in stripped and not stripped.startswith("#"):  # a term line can be the answer ("port (int): 8000")
                    raw.append((position + lead, position + len(body), ""))
            else:
                for a, b in _line_sentences(body, position):
                    raw.append((a, b, label))
        position += len(line)
    sentences = []
    for i, (a, b, lab) in enumerate(raw):
        prev = text[raw[i - 1][0]:raw[i - 1][1]].strip() if i > 0 and raw[i - 1][2] == lab and lab else ""
        nxt = text[raw[i + 1][0]:raw[i + 1][1]].strip() if i + 1 < len(raw) and raw[i + 1][2] == lab and lab else ""
        if i > 0 and not lab:
            prev = text[raw[i - 1][0]:raw[i - 1][1]].strip()
        if i + 1 < len(raw) and not lab:
            nxt = text[raw[i + 1][0]:raw[i + 1][1]].strip()
        sentences.append(Sentence(source, a, b, lab, text[a:b].strip(), prev, nxt))
    return sentences


def bm25(query: Sequence[str], documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 of each document for the query, with IDF over these documents alone."""
    n = len(documents)
    if n == 0:
        return np.zeros(0)
    frequency: Counter[str] = Counter()
    for doc in documents:
        frequency.update(set(doc))
    average = sum(len(d) for d in documents) / n or 1.0
    terms = set(query)
    idf = {t: math.log(1 + (n - frequency[t] + 0.5) / (frequency[t] + 0.5)) for t in terms}
    scores = np.zeros(n)
    for i, doc in enumerate(documents):
        counts = Counter(doc)
        norm = k1 * (1 - b + b * len(doc) / average)
        scores[i] = sum(idf[t] * counts[t] * (k1 + 1) / (counts[t] + norm) for t in terms if counts[t])
    return scores


def _scaled(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def score_sentences(question: str, sentences: Sequence[Sentence], embed: EmbedTexts | None) -> np.ndarray:
    """Each sentence's evidence score in [0, 1]: BM25 and embedding similarity, each scaled to its best."""
    if not sentences:
        return np.zeros(0)
    lexical = _scaled(bm25(content_words(question), [content_words(s.scored_text) for s in sentences]))
    if embed is None:
        return lexical
    vectors = embed([question, *(s.scored_text for s in sentences)])
    semantic = _scaled(np.clip(vectors[1:] @ vectors[0], 0.0, None))
    return LEXICAL_WEIGHT * lexical + (1 - LEXICAL_WEIGHT) * semantic


def site_suffix(titles: Sequence[str]) -> str:
    """The ending ("… — Python 3.11.2 documentation") that at least two and half of these page
    titles share: the site's name, not the page's ("" when there is none)."""
    ends = Counter(m.group(0) for m in (_TITLE_END.search(" ".join(t.split())) for t in titles) if m)
    if not ends:
        return ""
    end, count = ends.most_common(1)[0]
    return end if count >= 2 and 2 * count >= len(titles) else ""


def prompt_title(title: str, suffix: str) -> str:
    """A page title as a prompt shows it: without the site's name ``suffix``."""
    title = " ".join(title.split())
    return title[: -len(suffix)] if suffix and title.endswith(suffix) and len(title) > len(suffix) else title


def prompt_label(label: str) -> str:
    """A label as a prompt shows it: a breadcrumb's last heading (the source's title names the page)."""
    return label.rsplit(_CRUMB, 1)[-1]


@dataclass(frozen=True)
class EvidenceSet:
    """Every sentence of the retrieved chunks, scored; the best evidence of each hit."""

    hits: tuple[Hit, ...]
    sentences: tuple[Sentence, ...]
    ranked: tuple[Evidence, ...]  # every sentence as evidence, best first (see expectation.names_first)
    best: tuple[Evidence | None, ...]  # per hit, in hit order

    def windows(self, count: int) -> str:
        """The prompt text of the ``count`` best evidence sentences, each with its label and
        neighbours, grouped under their source's number and title (sources in hit order). Every
        token here is prefilled for each question, so a breadcrumb label shows only its last
        heading and a title drops the site's name that the sources' titles end with."""
        return "\n\n".join(self.window_blocks(count))

    def window_blocks(self, count: int) -> list[str]:
        """:meth:`windows` as one block of text per source."""
        chosen: dict[int, set[int]] = {}
        for ev in self.ranked[:count]:
            rows = chosen.setdefault(ev.sentence.source, set())
            for j in (ev.index - 1, ev.index, ev.index + 1):
                if 0 <= j < len(self.sentences) and self.sentences[j].source == ev.sentence.source \
                        and (j == ev.index or self.sentences[j].label == ev.sentence.label):
                    rows.add(j)
        blocks = []
        suffix = site_suffix([hit.title for hit in self.hits])
        for source in sorted(chosen):
            hit = self.hits[source]
            lines: list[str] = []
            label = None
            previous = -2
            for j in sorted(chosen[source]):
                sentence = self.sentences[j]
                if sentence.label != label or j != previous + 1:
                    if sentence.label and sentence.label != label:
                        lines.append(prompt_label(sentence.label))
                    lines.append(sentence.text)
                    label = sentence.label
                else:
                    lines[-1] += " " + sentence.text
                previous = j
            blocks.append(f"[{source + 1}] {prompt_title(hit.title, suffix) or hit.doc_id}\n" + "\n".join(lines))
        return blocks


def find_evidence(question: str, hits: Sequence[Hit], embed: EmbedTexts | None) -> EvidenceSet:
    """Score every sentence of ``hits`` for the question, its chunk's search score weighing in."""
    sentences = [s for i, hit in enumerate(hits) for s in split_sentences(hit.text, i)]
    scores = score_sentences(question, sentences, embed)
    if sentences:
        chunk = _scaled(np.clip(np.array([hits[s.source].score for s in sentences], dtype=np.float64), 0.0, None))
        scores = (scores + CHUNK_WEIGHT * chunk) / (1 + CHUNK_WEIGHT)
    ranked = [_evidence(hits, sentences, scores, int(i)) for i in np.argsort(-scores, kind="stable")]
    best: list[Evidence | None] = [None] * len(hits)
    for ev in ranked:
        if best[ev.source] is None:
            best[ev.source] = ev
    return EvidenceSet(tuple(hits), tuple(sentences), tuple(ranked), tuple(best))


def _evidence(hits: Sequence[Hit], sentences: Sequence[Sentence], scores: np.ndarray, i: int) -> Evidence:
    """Sentence ``i`` as evidence, joined by the next sentence of its chunk when that scores nearly as well."""
    s = sentences[i]
    start, end = s.start, s.end
    if i + 1 < len(sentences) and sentences[i + 1].source == s.source and sentences[i + 1].label == s.label \
            and scores[i + 1] >= EXTEND_RATIO * scores[i]:
        end = sentences[i + 1].end
    text = hits[s.source].text[start:end]
    return Evidence(s.source, start, end, text, float(scores[i]), s, i)
