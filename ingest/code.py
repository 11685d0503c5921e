"""Chunking source code: whole functions and classes where the language allows, else blank-line blocks."""

from __future__ import annotations

import ast
import re
from typing import Callable

CountTokens = Callable[[str], int]

LANGUAGES = {
    ".py": "python", ".js": "javascript", ".mjs": "javascript", ".ts": "typescript", ".tsx": "typescript",
    ".jsx": "javascript", ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".cs": "csharp", ".rb": "ruby", ".php": "php", ".swift": "swift",
    ".sh": "shell", ".sql": "sql", ".scala": "scala", ".lua": "lua",
}


def _python_units(source: str) -> list[str] | None:
    """Top-level statements, each function or class whole (with its decorators); None if it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    lines = source.splitlines()
    units: list[str] = []
    position = 0
    for node in tree.body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        end = getattr(node, "end_lineno", node.lineno)
        if start > position:  # comments and blank lines before the node
            gap = "\n".join(lines[position:start]).strip()
            if gap:
                units.append(gap)
        units.append("\n".join(lines[start:end]))
        position = end
    tail = "\n".join(lines[position:]).strip()
    if tail:
        units.append(tail)
    return units


def _blank_line_blocks(source: str) -> list[str]:
    return [b.strip("\n") for b in re.split(r"\n\s*\n", source) if b.strip()]


def _split_lines(unit: str, limit: int, count: CountTokens) -> list[str]:
    """An over-long unit cut at line ends, preferring a blank line once a piece is half full."""
    pieces: list[str] = []
    current: list[str] = []
    for line in unit.splitlines():
        blank = not line.strip()
        if current and (count("\n".join(current + [line])) > limit or (blank and count("\n".join(current)) > limit // 2)):
            pieces.append("\n".join(current).strip("\n"))
            current = []
            if blank:
                continue
        current.append(line)
    if current:
        pieces.append("\n".join(current).strip("\n"))
    return [p for p in pieces if p.strip()]


def chunk_code(source: str, language: str, title: str, count: CountTokens, target_tokens: int = 220) -> list[str]:
    """Chunks that follow definitions; small neighbours are packed together up to the target."""
    header = f"{title} ({language})"
    limit = max(16, target_tokens - count(header) - 2)
    units = (_python_units(source) if language == "python" else None) or _blank_line_blocks(source)
    pieces = [p for unit in units for p in (_split_lines(unit, limit, count) if count(unit) > limit else [unit])]
    chunks: list[str] = []
    current: list[str] = []
    for piece in pieces:
        candidate = "\n\n".join(current + [piece])
        if current and count(candidate) > limit:
            chunks.append(header + "\n\n" + "\n\n".join(current))
            current = [piece]
        else:
            current.append(piece)
    if current:
        chunks.append(header + "\n\n" + "\n\n".join(current))
    return chunks
