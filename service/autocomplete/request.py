"""A suggestion request: the typed text's suggestion streamed to the client through its request."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from smallfirst.service.autocomplete.engine import Autocompleter
from smallfirst.service.autocomplete.typist import Typist
from smallfirst.service.protocol import Complete
from smallfirst.service.request import Request, Send


async def complete(autocomplete: Autocompleter, check_collection: Callable[[str], Awaitable[Any]], msg: Complete,
                   send: Send, req: Request, typist: Typist) -> str:
    """Stream a suggestion for the typed text. A superseded suggestion sends nothing more: text
    still queued for the socket is dropped, not delivered late. ``check_collection`` refuses a
    collection that does not exist."""
    if msg.collection is not None:
        await check_collection(msg.collection)  # an unknown set is refused here too
    if not msg.text.strip():
        return "stop"
    stats = req.segment("small")
    try:
        await req.pump(send, autocomplete.suggest(typist, msg.text, msg.max_tokens, stats, msg.collection))
    except asyncio.CancelledError:
        if req.writer is not None:
            req.writer.discard()
        raise
    except Exception:
        await req.finish()  # what was streamed before the error still goes out
        raise
    await req.finish()
    req.timings["step"] = round(stats.step_ms, 1)
    if typist.copied_from is not None:
        req.extra["copied"] = typist.copied_from
    elif typist.used is not None:
        req.extra["grounding"] = typist.used.describe()
    return stats.finish
