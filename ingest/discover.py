"""Find the documents under a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ingest.loaders import SUPPORTED_SUFFIXES


def discover(root: Path, suffixes: Iterable[str] = SUPPORTED_SUFFIXES) -> list[Path]:
    """Supported files under ``root``, sorted, skipping hidden files and folders."""
    wanted = {s.lower() for s in suffixes}
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder) / name
            if not name.startswith(".") and path.suffix.lower() in wanted and path.is_file():
                found.append(path)
    return sorted(found)
