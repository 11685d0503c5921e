"""Find the documents under a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from smallfirst.ingest.loaders import SUPPORTED_SUFFIXES


def discover(
    root: Path, suffixes: Iterable[str] = SUPPORTED_SUFFIXES, skipped: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Supported files under ``root``, sorted, skipping hidden files and folders.

    A file that resolves outside ``root`` (a symlink pointing elsewhere) is not returned; it is
    appended to ``skipped`` with the reason. Folder symlinks are never followed.
    """
    wanted = {s.lower() for s in suffixes}
    real_root = root.resolve()
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in wanted:
                continue
            if not inside(path, real_root):
                if skipped is not None:
                    skipped.append((relative_name(path, root), "symlink to a file outside the ingested folder"))
                continue
            if path.is_file():
                found.append(path)
    return sorted(found)


def inside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` resolves (following every symlink) to ``real_root`` or below it."""
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (without resolving symlinks), as posix text."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name
