"""Folders made once per machine from local files (the int8 embedder, the float weights distill
trains on) and kept under ``$XDG_CACHE_HOME/smallfirst`` (``~/.cache/smallfirst``).

A folder is built in a scratch folder beside its place and renamed into it, under a file lock:
several processes may ask at once, one builds, and none ever sees half a folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

KEY_BYTES = 1 << 20


def cache_root(kind: str) -> Path:
    """``$XDG_CACHE_HOME/smallfirst/<kind>``, or ``~/.cache/smallfirst/<kind>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smallfirst" / kind


def files_key(files: Iterable[tuple[str, Path]], recipe: str) -> str:
    """A key that changes whenever the files or the recipe do: each file's name and size, and its
    first and last MiB (cheap next to hashing whole weights, and unlike modification times it
    survives a copy)."""
    digest = hashlib.sha256(recipe.encode())
    for name, path in files:
        size = path.stat().st_size
        digest.update(f"{name}\x00{size}\n".encode())
        with open(path, "rb") as f:
            digest.update(f.read(KEY_BYTES))
            if size > 2 * KEY_BYTES:
                f.seek(-KEY_BYTES, os.SEEK_END)
                digest.update(f.read(KEY_BYTES))
    return digest.hexdigest()[:20]


def built_once(target: Path, done_marker: str, build: Callable[[Path], None]) -> Path:
    """``target``, built first by ``build(scratch)`` unless it holds ``done_marker`` already.
    ``build`` writes the marker last. Raises OSError when the cache cannot be written."""
    if (target / done_marker).is_file():
        return target
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{target.name}.lock"):
        if (target / done_marker).is_file():  # another process built it while this one waited
            return target
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            build(scratch)
            if target.exists():
                shutil.rmtree(target)
            os.replace(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
