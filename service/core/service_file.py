"""The file that tells the ingest CLI a running service holds the embedded store (its URL and pid)."""

from __future__ import annotations

import json
import os

from smallfirst.settings import Settings


def write_service_file(settings: Settings) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    settings.service_file.write_text(json.dumps({"url": f"http://{host}:{settings.port}", "pid": os.getpid()}))


def remove_service_file(settings: Settings) -> None:
    """Remove the file, only when this process wrote it."""
    path = settings.service_file
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
