"""One writer at a time: an advisory lock file in the data folder that names its holder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from smallfirst.errors import StoreLocked


class WriterLock:
    """Held by whoever is ingesting (the CLI or the service's worker) for the length of a sync.

    The embedded store already admits one process; this lock also keeps two writers on one
    machine apart when they share a Qdrant server.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "ingest.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreLocked(f"another ingest ({holder}) is writing to this store; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
