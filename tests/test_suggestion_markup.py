"""Ghost text is plain text: over a few hundred keystrokes on the bundled docs, served by a real
server with the real model, no suggestion shows markup that the user did not type."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import websockets

from tests.conftest import Server, smallfirst

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs"

# What a user types into the demo page: the prefix that once got "<strong>question</strong> in
# the queue." as its suggestion, and sentences of the bundled docs, one character at a time.
TYPED = [
    "To make answers faster, the service keeps the ",
    "The text area shows the streamed suggestion in grey after the cursor. Tab accepts the suggestion and Escape dismisses it.",
    "Every typist has a slot of their own in the autocomplete context, so typists never evict each other's cache.",
    "The ask box sends a question; the sources appear first, as links to the original documents with their scores.",
    "Prompts are laid out so that what changes last comes last: instructions, then retrieved context, then the user's text.",
    "Browsers send an Origin header with every WebSocket connection. smallfirst accepts connections from its own origin.",
]
EVERY = 4  # characters between two requests inside a word


def keystrokes(text: str) -> Iterator[str]:
    """The prefixes that get a suggestion: at each word boundary and every few characters."""
    for i in range(1, len(text) + 1):
        if text[i - 1] == " " or i % EVERY == 0 or i == len(text):
            yield text[:i]


def markup_in(suggestion: str, typed: str) -> list[str]:
    """The markup in ``suggestion`` made of characters that ``typed`` does not contain."""
    found = []
    found += [c for c in suggestion if c in "<>" and c not in typed]
    if "&" not in typed:
        found += re.findall(r"&[A-Za-z#]\w*;?", suggestion)
    if "*" not in typed:
        found += re.findall(r"\*+", suggestion)
    if "_" not in typed:  # emphasis, not a "_" between two word characters as in snake_case
        context = typed[-1:] + suggestion
        for run in re.finditer(r"_+", context):
            before = context[run.start() - 1] if run.start() else ""
            after = context[run.end()] if run.end() < len(context) else ""
            if not (before.isalnum() and after.isalnum()):
                found.append(run.group())
    return found


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bundled docs ingested with the real CLI, served by a real server process."""
    data_dir = tmp_path_factory.mktemp("docs-served")
    result = smallfirst("ingest", str(DOCS), "--no-progress", env={"SMALLFIRST_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    srv = Server(data_dir).start()
    yield srv
    srv.stop()


async def recv(ws: Any, timeout: float = 60) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def suggestion(ws: Any, request_id: str, text: str) -> tuple[str, dict[str, Any]]:
    """The whole suggestion for ``text`` and its done frame (each request read to its end)."""
    await ws.send(json.dumps({"type": "complete", "id": request_id, "text": text}))
    pieces = []
    while True:
        frame = await recv(ws)
        if frame.get("id") != request_id:
            continue
        if frame["type"] == "token":
            pieces.append(frame["text"])
        elif frame["type"] in ("done", "error"):
            return "".join(pieces), frame


def test_no_suggestion_shows_markup_the_user_did_not_type(docs_server: Server) -> None:
    async def scenario() -> list[tuple[str, str, dict[str, Any]]]:
        results = []
        async with websockets.connect(docs_server.ws, max_size=None, additional_headers=docs_server.auth) as ws:
            assert (await recv(ws))["type"] == "ready"
            n = 0
            for text in TYPED:
                for typed in keystrokes(text):
                    n += 1
                    results.append((typed, *(await suggestion(ws, f"k{n}", typed))))
        return results

    results = asyncio.run(scenario())
    assert len(results) >= 200
    errors = [(typed, done) for typed, _, done in results if done["type"] == "error"]
    assert not errors, errors[:3]
    assert all(done["finish"] in ("stop", "length") for _, _, done in results)
    assert sum(1 for _, text, _ in results if text.strip()) >= len(results) // 2  # suggestions were made
    shown = [(typed, text, markup_in(text, typed)) for typed, text, _ in results]
    with_markup = [(typed, text, found) for typed, text, found in shown if found]
    assert not with_markup, "\n".join(f"{typed!r} -> {text!r} ({found})" for typed, text, found in with_markup)
