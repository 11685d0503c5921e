"""Multipart uploads streamed to disk off the event loop, bounded per file, per request and per collection.

Files are written into a staging folder as they arrive; only when the whole request has been read
and checked are they moved into ``DATA_DIR/uploads/COLLECTION``. Any failure removes the staging
folder, so a refused or broken upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, AsyncIterator

from smallfirst.errors import BadRequest, Forbidden, TooLarge
from smallfirst.settings import Settings
from smallfirst.retrieval.store import COLLECTION_NAME

MAX_PART_HEADER_BYTES = 16_384
MAX_FIELD_BYTES = 1024
MAX_FILES = 1000
_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?')
_DISPOSITION_PARAM = re.compile(r';\s*([a-zA-Z*]+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Staged:
    """What one upload request carried: its files (in the staging folder) and its text fields."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    total: int = 0


def boundary_of(content_type: str) -> bytes:
    match = _BOUNDARY.search(content_type)
    if not match:
        raise BadRequest("a multipart upload needs a boundary in its Content-Type")
    return match.group(1).encode("latin-1")


def _disposition(headers: bytes) -> dict[str, str]:
    for line in headers.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            return {k.lower(): v for k, v in _DISPOSITION_PARAM.findall(value)}
    raise BadRequest("a multipart part has no Content-Disposition")


def safe_name(filename: str) -> str:
    name = Path(filename.replace("\\", "/")).name
    if not name or name.startswith(".") or "\x00" in name or len(name) > 255:
        raise BadRequest(f"unusable file name {filename[:80]!r}")
    return name


class _Writer:
    """One part's destination: a file written on a worker thread, or a small text field in memory."""

    def __init__(self, staged: Staged, disposition: dict[str, str], file_limit: int, request_limit: int) -> None:
        self.staged, self.file_limit, self.request_limit = staged, file_limit, request_limit
        self.field = disposition.get("name", "")
        self.size = 0
        self.handle: IO[bytes] | None = None
        self.text = bytearray()
        if "filename" in disposition:
            if len(staged.files) >= MAX_FILES:
                raise TooLarge(f"an upload may carry at most {MAX_FILES} files")
            if self.field != "files":
                raise BadRequest("upload files in the field 'files'")
            path = staged.folder / safe_name(disposition["filename"])
            if path in staged.files:
                raise BadRequest(f"two files named {path.name!r} in one upload")
            staged.files.append(path)
            self.handle = open(path, "wb")  # noqa: SIM115 - closed in close()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        self.staged.total += len(data)
        if self.staged.total > self.request_limit:
            raise TooLarge(f"the upload is over the {self.request_limit}-byte limit (SMALLFIRST_MAX_UPLOAD_MB)")
        if self.handle is None:
            if self.size > MAX_FIELD_BYTES:
                raise TooLarge(f"the field {self.field!r} is over {MAX_FIELD_BYTES} bytes")
            self.text += data
            return
        if self.size > self.file_limit:
            raise TooLarge(f"a file is over the {self.file_limit}-byte limit (SMALLFIRST_MAX_FILE_MB)")
        await asyncio.to_thread(self.handle.write, data)

    async def close(self) -> None:
        if self.handle is not None:
            await asyncio.to_thread(self.handle.close)
        elif self.field:
            self.staged.fields[self.field] = self.text.decode("utf-8", "replace")


async def parse_multipart(chunks: AsyncIterator[bytes], boundary: bytes, staged: Staged,
                          file_limit: int, request_limit: int) -> None:
    """Stream the parts of a multipart body into ``staged``; raise on anything malformed or too large."""
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"  # the body starts with "--boundary": give it the leading line break of the others
    state = "preamble"
    writer: _Writer | None = None
    async for chunk in chunks:
        buffer += chunk
        while True:
            if state == "preamble":
                at = buffer.find(delimiter)
                if at < 0:
                    buffer = buffer[-len(delimiter):]
                    break
                buffer, state = buffer[at + len(delimiter):], "after_delimiter"
            elif state == "after_delimiter":
                if len(buffer) < 2:
                    break
                if buffer.startswith(b"--"):
                    return
                if not buffer.startswith(b"\r\n"):
                    raise BadRequest("malformed multipart body")
                buffer, state = buffer[2:], "headers"
            elif state == "headers":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_PART_HEADER_BYTES:
                        raise BadRequest("multipart part headers are too long")
                    break
                writer = await asyncio.to_thread(_Writer, staged, _disposition(buffer[:end]), file_limit, request_limit)
                buffer, state = buffer[end + 4:], "body"
            else:  # body
                assert writer is not None
                at = buffer.find(delimiter)
                if at < 0:
                    keep = len(delimiter) - 1
                    await writer.write(buffer[:-keep] if len(buffer) > keep else b"")
                    buffer = buffer[-keep:] if len(buffer) > keep else buffer
                    break
                await writer.write(buffer[:at])
                await writer.close()
                writer = None
                buffer, state = buffer[at + len(delimiter):], "after_delimiter"
    if writer is not None:
        await writer.close()
    raise BadRequest("the multipart body ended before its closing boundary")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


async def receive_upload(chunks: AsyncIterator[bytes], content_type: str, settings: Settings) -> Staged:
    """Stage an upload's files; the caller moves them into place with :func:`commit` or removes them with :func:`discard`."""
    staging = settings.uploads_dir / ".staging" / uuid.uuid4().hex
    await asyncio.to_thread(staging.mkdir, parents=True)
    staged = Staged(staging)
    request_limit = int(settings.max_upload_mb * 1_000_000)
    try:
        await parse_multipart(chunks, boundary_of(content_type), staged,
                              min(int(settings.max_file_mb * 1_000_000), request_limit), request_limit)
        if not staged.files:
            raise BadRequest("a multipart upload needs one or more files in the field 'files'")
        collection = staged.fields.get("collection") or settings.collection
        if not COLLECTION_NAME.match(collection):
            raise BadRequest("'collection' must be 1 to 64 letters, digits, '_' or '-'")
    except BaseException:
        await discard(staged)
        raise
    return staged


async def commit(staged: Staged, collection: str, settings: Settings) -> Path:
    """Move staged files into the collection's uploads folder within its quota; returns that folder."""
    target = settings.uploads_dir / collection
    quota = int(settings.upload_quota_mb * 1_000_000)

    def move() -> None:
        replaced = sum(p.stat().st_size for p in (target / f.name for f in staged.files) if p.is_file())
        if folder_bytes(target) - replaced + staged.total > quota:
            raise Forbidden(f"the uploads of collection {collection!r} would pass their "
                            f"{quota}-byte quota (SMALLFIRST_UPLOAD_QUOTA_MB)")
        target.mkdir(parents=True, exist_ok=True)
        for path in staged.files:
            path.replace(target / path.name)

    try:
        await asyncio.to_thread(move)
    finally:
        await discard(staged)
    return target


async def discard(staged: Staged) -> None:
    await asyncio.to_thread(shutil.rmtree, staged.folder, True)
