"""What kind of answer a question asks for, and whether an answer gives one.

"Which method …?", "What exception …?", "Which environment variable …?" ask for a *name*. A small
model often answers such a question fluently without naming anything ("The exception is raised
if the directory does not exist."), or names only what the question already named ("The next()
method …" for "Which method returns the next element?"). Both read as supported to a lexical
check, since every word of them is in the sources. This module spots the questions that ask for
a name, finds the names an answer gives beyond the question's own, and lists the names the best
evidence gives, which the small tier picks its answer among.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

from smallfirst.retrieval.evidence import STOPWORDS, Evidence, EvidenceSet, content_words, words

# The kinds of thing whose answer is a name, code-shaped or a plain word the sources call a thing
# of that kind ("the deque type"). Left out: "file" and "directory", which head other nouns
# ("Which file formats …?", "Which file name …?"); "format", often answered by several ("Markdown
# and text"); and "model", whose names run over several words and numbers ("Gemma 3 270M"),
# which no single option holds. "What kind of tool …?" asks for a description, not a name (while "What kind of error …?" wants one).
# The list holds general classes of named things in software documentation; no word is kept for
# the sake of one question (left out of the corpus that asks it, nothing would have chosen it).
CALLABLE_KINDS = ("function", "method", "decorator", "handler", "class", "exception", "error")
OTHER_KINDS = ("module", "library", "statement", "keyword", "constant", "attribute", "variable", "flag", "option",
               "operator", "type", "tool", "script", "command", "argument", "parameter", "setting", "field",
               "header", "character", "algorithm", "package", "extension", "endpoint")
_KINDS = CALLABLE_KINDS + OTHER_KINDS
# A lead-in phrase before the question word ("With the 'replace' error handler, which character …?"),
# but no clause that is itself a question ("Does pathlib, which module …, support globbing?").
LEAD = (r"^\s*(?:(?!(?:what|which|who|whom|whose|how|why|when|where|does|do|did|is|are|was|were|can|could|should"
        r"|will|would|may|must|has|have|had)\b)[^?,]{1,60},\s*)?")
_ASKS = re.compile(
    LEAD + r"(?:which|what)\s+((?:[\w.\-/]+\s+){0,3}?)(" + "|".join(_KINDS) + r")(?:es|s)?\b(?!-)", re.IGNORECASE)
_DESCRIPTION = re.compile(r"\b(?:kind|sort|type)s?\s+of\b", re.IGNORECASE)  # "What kind of tool …?"
_ENVIRONMENT = re.compile(r"\benvironment\s+variable", re.IGNORECASE)

_CODE_NAME = re.compile(
    r"(?<![\w-])(?:@?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?"  # dotted: str.zfill, json.tool
    r"|@?\w+\(\)"  # a call: enumerate()
    r"|@[A-Za-z_]\w*"  # a decorator: @unique
    r"|[A-Za-z]*_\w*"  # snake_case, __next__
    r"|[a-z]+[A-Z]\w*|[A-Z][a-z0-9]+[A-Z]\w*|[A-Z]{3,}\w*|[A-Z]{2,}[a-z]\w*)(?![\w=])"  # camelCase, PascalCase, CAPS
)
_FLAG = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*|(?<![\w-])\w+=\w+")  # --quiet, -N, or a keyword argument: strict=False
_CAPS = re.compile(r"\b[A-Z][A-Z0-9_]+[A-Z0-9]\b")  # PYTHONSTARTUP, SMALLFIRST_PORT; not a prefix like SMALLFIRST_
OPERATOR = re.compile(r"(?<![^\s(\[`])([-+*/%=<>!&|^~@:]{2,3})(?=[\s)\].,`]|$)")  # //, **, ->, !=, :=


@dataclass(frozen=True)
class Expectation:
    """A question asks for a name of this kind (``environment`` when only CAPS names will do)."""

    kind: str
    environment: bool = False

    def describe(self) -> str:
        if self.environment:
            return "an environment variable's name"
        return f"the name of {'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind}"


def _kind(word: str) -> str | None:
    """The kind a word of a question names ("modules" → module), if any."""
    word = word.lower().rstrip("?,.;:")
    return next((k for k in _KINDS if word in (k, k + "s", k + "es")), None)


def expected(question: str) -> Expectation | None:
    """The name a question asks for, or ``None`` when it does not ask for one."""
    match = _ASKS.match(question)
    if match is None:
        return None
    kind: str | None = match.group(2).lower()
    after = question[match.end():].split()
    described = bool(_DESCRIPTION.search(match.group(1)))
    if kind == "type" and after[:1] == ["of"]:  # "What type of error …?": the kind follows
        described, kind, after = True, _kind(after[1]) if len(after) > 1 else None, after[2:]
        if kind is None:
            return None
    for word in after[:2]:  # "Which standard library module …?" asks for a module
        following = _kind(word)
        if following is None:
            break
        kind = following
    assert kind is not None
    if described and kind not in CALLABLE_KINDS:  # "What kind of tool …?" wants a description, "… of error …?" a name
        return None
    return Expectation(kind, environment=kind == "variable" and bool(_ENVIRONMENT.search(question)))


def name_key(name: str) -> str:
    """The form names are compared in: lower case, without a decorator's ``@`` or a call's ``()``."""
    return name.lower().lstrip("@").removesuffix("()")


def _is_new(name: str, asked: set[str], asked_names: set[str]) -> bool:
    """A name is new unless the question already holds it (``next()`` for "… its next element?"),
    also when it qualifies a name the question gave (``json.JSONDecodeError`` for "… is
    JSONDecodeError a subclass of?"), while ``__next__`` is a name of its own, and so is
    ``comp.lang.python`` for a question about Python."""
    key = name_key(name)
    return key not in asked and key.rsplit(".", 1)[-1] not in asked_names and key not in STOPWORDS


def _named_by_kind(answer: str, kind: str) -> Iterable[str]:
    """Plain words the answer calls a thing of this kind: "the heapq module", "statement nonlocal"."""
    tokens = words(answer)
    for i, token in enumerate(tokens):
        if token not in (kind, kind + "s", kind + "es"):
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(tokens) and tokens[j] not in STOPWORDS:
                yield tokens[j]


# Kinds whose names are never written as a call: ``as_integer_ratio()`` is no module.
_NOT_CALLED = ("module", "library", "package", "statement", "keyword", "operator", "header", "extension", "endpoint",
               "character", "variable", "constant", "setting", "field", "flag", "option", "argument", "parameter",
               "script")


def _fits_kind(name: str, kind: str) -> bool:
    """Whether a name can be a thing of this kind: a call (``read_gauge()``) never names a module
    or a setting, and neither a bare snake_case name (``weird_json``) nor an attribute
    (``JSONDecodeError.msg``) is an exception class, while ``ValueError`` and a qualified
    ``re.error`` are."""
    if name.endswith("()") and kind in _NOT_CALLED:
        return False
    if kind not in ("exception", "error"):
        return True
    bare = name.lstrip("@").removesuffix("()")
    last = bare.rsplit(".", 1)[-1]
    if "." in bare:  # re.error, json.JSONDecodeError; not an attribute such as JSONDecodeError.msg
        return last[:1].isupper() or last.endswith("error")
    return not ("_" in bare.strip("_") and bare.islower())


def _proper_names(answer: str, kind: str) -> Iterable[str]:
    """Names of several capitalised words the answer calls a thing of this kind: "GNU Readline"
    for "the GNU Readline library", which no single word of it names."""
    for match in re.finditer(r"((?:[A-Z0-9][\w.+-]*\s+){2,4})" + re.escape(kind) + r"(?:es|s)?\b", answer):
        parts = match.group(1).split()
        while parts and parts[0].lower() in STOPWORDS:  # "This GNU Readline library"
            parts.pop(0)
        if len(parts) >= 2:
            yield " ".join(parts)


def names_given(answer: str, question: str, expectation: Expectation, sources: str) -> list[str]:
    """The names ``answer`` gives that the question did not: code-shaped names (only CAPS ones for an
    environment variable; flags and ``name=value`` only for a flag or an option), or a plain word the answer itself
    calls a thing of the asked kind (or several capitalised words: "GNU Readline"), provided the sources hold it."""
    asked = set(content_words(question)) | set(words(question)) | set(re.findall(r"\w+", question.lower()))
    asked_names = {name_key(name) for name in _CODE_NAME.findall(question)}
    if expectation.environment:
        found = _CAPS.findall(answer)
    else:
        found = _CODE_NAME.findall(answer)
        if expectation.kind in ("flag", "option"):
            found += _FLAG.findall(answer)
        if expectation.kind == "operator":
            found += [op for op in OPERATOR.findall(answer) if set(op) != {"-"}]  # not a dash or a rule: --, ---
        haystack = set(words(sources))
        found += [w for w in _named_by_kind(answer, expectation.kind) if w in haystack]
        flat = " ".join(sources.lower().split())
        for name in _proper_names(answer, expectation.kind):
            if name.lower() in flat:  # the whole name, and none of its words alone
                parts = {part.lower() for part in name.split()}
                found = [f for f in found if f.lower() not in parts] + [name]
    return [name for name in found if _is_new(name, asked, asked_names) and _fits_kind(name, expectation.kind)]


MAX_OPTIONS = 8  # names the small model chooses among: each costs a few model steps


def _is_abbreviation(name: str) -> bool:
    """``i.e``, ``e.g``: dotted single letters are not names."""
    return all(len(part) <= 1 for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def name_options(question: str, expectation: Expectation, evidence: Sequence[Evidence], sources: str,
                 sentences: int = 2) -> list[tuple[str, int]]:
    """The names the best ``sentences`` evidence sentences themselves (with their label lines) give
    for a question that asks for one, new to the question, best sentence first, each with the index
    of the source it stands in: what the small tier chooses its answer among."""
    options: list[tuple[str, int]] = []
    seen: set[str] = set()
    for ev in evidence[:sentences]:
        for name in names_given(_core(ev), question, expectation, sources):
            key = name_key(name)
            if key in seen or _is_abbreviation(name):
                continue
            seen.add(key)
            options.append((name, ev.source))
    return options[:MAX_OPTIONS]


NAMED_DEPTH = 4  # best evidence sentences among which those giving a name come first


def _core(ev: Evidence) -> str:
    return f"{ev.sentence.label}\n{ev.text}" if ev.sentence.label else ev.text


def names_first(question: str, evidence: EvidenceSet) -> EvidenceSet:
    """For a question that asks for a name, the evidence with those of its best ``NAMED_DEPTH``
    sentences that give a new name ahead of those that give none, each group in score order: a
    sentence without a name cannot answer "Which method …?", however many of its words it shares."""
    expectation = expected(question)
    if expectation is None:
        return evidence
    sources = "\n".join(hit.text for hit in evidence.hits)
    head = evidence.ranked[:NAMED_DEPTH]
    gives = [bool(names_given(_core(ev), question, expectation, sources)) for ev in head]
    if gives == sorted(gives, reverse=True):  # already first, or none gives one
        return evidence
    order = sorted(range(len(head)), key=lambda i: not gives[i])  # stable: score order within each group
    return replace(evidence, ranked=(*(head[i] for i in order), *evidence.ranked[NAMED_DEPTH:]))


def answer_phrase(name: str, expectation: Expectation) -> str:
    """How an answer states a chosen name: as it is when it is code-shaped (``read_gauge()``),
    else with the kind the question asked for ("heapq module"), as the sources called it."""
    if _CODE_NAME.fullmatch(name) or _FLAG.fullmatch(name) or _CAPS.fullmatch(name) or OPERATOR.fullmatch(name):
        return name
    return f"{name} {expectation.kind}"
