"""The API token and the local key: files in DATA_DIR, readable by their owner only.

The service generates the token at its first start when none is configured; every CLI command
on the same machine reads it from there, so no flag is needed. The local key is rewritten at
each start; a request that carries it comes from a user who can read DATA_DIR.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from smallfirst.settings import Settings

LOCAL_HEADER = "x-smallfirst-local"


def _write_private(path: Path, value: str) -> None:
    """Write ``value`` to a new file created with mode 0600 (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    os.replace(temp, path)


def _read(path: Path) -> str | None:
    try:
        value = path.read_text().strip()
    except OSError:
        return None
    return value or None


def server_token(settings: Settings) -> str | None:
    """The token the service requires: the configured one, else the one in DATA_DIR (created on first
    start); None when the token requirement is switched off."""
    if not settings.require_token:
        return None
    if settings.api_token:
        return settings.api_token
    existing = _read(settings.token_file)
    if existing:
        return existing
    token = secrets.token_urlsafe(32)
    _write_private(settings.token_file, token)
    return token


def client_token(settings: Settings) -> str | None:
    """The token a CLI command sends: the configured one, else the service's file in DATA_DIR."""
    return settings.api_token or _read(settings.token_file)


def new_local_key(settings: Settings) -> str:
    """A fresh local key, written to DATA_DIR for the CLI on this machine."""
    key = secrets.token_urlsafe(32)
    _write_private(settings.local_key_file, key)
    return key


def local_key(settings: Settings) -> str | None:
    return _read(settings.local_key_file)
