"""What kind of answer a question asks for, and whether an answer gives one.

"Which method …?", "What exception …?", "Which environment variable …?" ask for a *name*. A small
model often answers such a question fluently without naming anything ("The exception is raised
if the directory does not exist."), or names only what the question already named ("The next()
method …" for "Which method returns the next element?"). Both read as supported to a lexical
check, since every word of them is in the sources. This module spots the questions that ask for
a name and finds the names an answer gives beyond the question's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from smallfirst.retrieval.evidence import STOPWORDS, content_words, words

# The kinds of thing whose answer is a name. Kinds answered by a plain word as often as by a
# name ("Which data type …?" → "deque", "Which standard …?") are left out on purpose.
CALLABLE_KINDS = ("function", "method", "decorator", "helper", "handler", "class", "exception", "error")
OTHER_KINDS = ("module", "library", "statement", "keyword", "constant", "attribute", "variable", "flag", "option",
               "action", "operator")
_KINDS = CALLABLE_KINDS + OTHER_KINDS
_ASKS = re.compile(
    r"^\s*(?:which|what)\s+((?:[\w.\-/]+\s+){0,3}?)(" + "|".join(_KINDS) + r")(?:es|s)?\b", re.IGNORECASE)
_ENVIRONMENT = re.compile(r"\benvironment\s+variable", re.IGNORECASE)

_CODE_NAME = re.compile(
    r"(?<![\w-])(?:@?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?"  # dotted: str.zfill, json.tool
    r"|@?\w+\(\)"  # a call: enumerate()
    r"|@[A-Za-z_]\w*"  # a decorator: @unique
    r"|[A-Za-z]*_\w*"  # snake_case, __next__
    r"|[a-z]+[A-Z]\w*|[A-Z][a-z0-9]+[A-Z]\w*|[A-Z]{3,}\w*|[A-Z]{2,}[a-z]\w*)(?![\w=])"  # camelCase, PascalCase, CAPS
)
_FLAG = re.compile(r"(?<![\w-])--?[a-z][\w-]*|(?<![\w-])\w+=\w+")  # --quiet, or a keyword argument: strict=False
_CAPS = re.compile(r"\b[A-Z][A-Z0-9_]{2,}\b")


@dataclass(frozen=True)
class Expectation:
    """A question asks for a name of this kind (``environment`` when only CAPS names will do)."""

    kind: str
    environment: bool = False

    def describe(self) -> str:
        if self.environment:
            return "an environment variable's name"
        return f"the name of {'an' if self.kind[0] in 'aeiou' else 'a'} {self.kind}"


def expected(question: str) -> Expectation | None:
    """The name a question asks for, or ``None`` when it does not ask for one."""
    match = _ASKS.match(question)
    if match is None:
        return None
    kind = match.group(2).lower()
    return Expectation(kind, environment=kind == "variable" and bool(_ENVIRONMENT.search(question)))


def _is_new(name: str, asked: set[str]) -> bool:
    """A name is new unless the question already holds it (``next()`` for "… its next element?"),
    while ``__next__`` is a name of its own."""
    key = name.lower().lstrip("@").removesuffix("()")
    return key not in asked and key not in STOPWORDS


def _named_by_kind(answer: str, kind: str) -> Iterable[str]:
    """Plain words the answer calls a thing of this kind: "the heapq module", "statement nonlocal"."""
    tokens = words(answer)
    for i, token in enumerate(tokens):
        if token not in (kind, kind + "s", kind + "es"):
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(tokens) and tokens[j] not in STOPWORDS:
                yield tokens[j]


def names_given(answer: str, question: str, expectation: Expectation, sources: str) -> list[str]:
    """The names ``answer`` gives that the question did not: code-shaped names (only CAPS ones for an
    environment variable; flags and ``name=value`` only for a flag or an option), or a plain word the answer itself
    calls a thing of the asked kind, provided the sources hold it."""
    asked = set(content_words(question)) | set(words(question)) | set(re.findall(r"\w+", question.lower()))
    if expectation.environment:
        found = _CAPS.findall(answer)
    else:
        found = _CODE_NAME.findall(answer)
        if expectation.kind in ("flag", "option"):
            found += _FLAG.findall(answer)
        haystack = set(words(sources))
        found += [w for w in _named_by_kind(answer, expectation.kind) if w in haystack]
    return [name for name in found if _is_new(name, asked)]
