"""Which server folders an ingest request may read.

The rule: a folder given to ``POST /api/ingest`` must resolve (symlinks followed) to a folder
inside one of the allowed roots: ``SMALLFIRST_INGEST_ROOTS``, ``SMALLFIRST_WATCH_FOLDERS`` and
``DATA_DIR/uploads``. A request that carries the local key (the ``smallfirst ingest`` CLI of a
user who can read DATA_DIR) may name any folder. Nothing is said about a path outside the roots,
not even whether it exists.
"""

from __future__ import annotations

from pathlib import Path

from smallfirst.errors import BadRequest, Forbidden
from smallfirst.settings import Settings


def allowed_roots(settings: Settings) -> list[Path]:
    """The real paths of the folders under which ingest may read."""
    roots = [*settings.ingest_roots, *settings.watch_folders, str(settings.uploads_dir)]
    return [Path(r).expanduser().resolve() for r in roots]


def ingest_folder(raw: str, settings: Settings, unrestricted: bool = False) -> Path:
    """The real path of the folder to ingest, or an error that reveals nothing outside the roots."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise BadRequest("'path' must be an absolute path on the server's machine")
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError):
        raise BadRequest("'path' cannot be resolved") from None
    if not unrestricted and not any(real.is_relative_to(root) for root in allowed_roots(settings)):
        raise Forbidden("'path' is not under an allowed ingest root (SMALLFIRST_INGEST_ROOTS)")
    if not real.is_dir():
        raise BadRequest(f"not a folder on the server: {path}")
    return real
