"""Keeps each typist's grounding passage current, off the keystroke path.

When the typed words change, they are looked up in the background; when the best passage
changes, it is prefilled into a standby slot and the typist switches over once it is ready. The
current slot serves every keystroke meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from smallfirst.errors import SmallfirstError
from smallfirst.retrieval.store import Hit
from smallfirst.service.autocomplete.grounding import Grounder, Grounding, grounding_query
from smallfirst.service.autocomplete.ownership import SlotOwners
from smallfirst.service.autocomplete.typist import Job, Typist
from smallfirst.service.scheduler import Priority

log = logging.getLogger(__name__)

Build = Callable[[Hit, Priority], Awaitable[Grounding]]
Standby = Callable[[Typist, Grounding, str], "Job | None"]


class GroundingRefresh:
    """One background lookup at a time per typist; the newest typed text wins."""

    def __init__(self, grounder: Grounder, build: Build, standby: Standby, owners: SlotOwners) -> None:
        self._grounder = grounder
        self._build = build
        self._standby = standby
        self._owners = owners

    def later(self, typist: Typist, text: str, collection: str | None) -> None:
        """Look ``text``'s words up soon, unless they are the ones looked up last."""
        query = grounding_query(text)
        if query is None or (collection, query) == typist.query:
            return
        typist.wanted = (text, collection)
        if typist.refreshing is None or typist.refreshing.done():
            typist.refreshing = asyncio.get_running_loop().create_task(self._run(typist))

    async def _run(self, typist: Typist) -> None:
        try:
            while typist.wanted is not None:
                text, collection = typist.wanted
                typist.wanted = None
                query = grounding_query(text)
                if query is None or (collection, query) == typist.query:
                    continue
                typist.query = (collection, query)
                typist.queries.append(typist.query)
                hit = await self._grounder.pick(query, collection, typist.grounding)
                if hit is not None:
                    await self._switch(typist, await self._build(hit, Priority.ANSWER), text)
        except asyncio.CancelledError:
            raise
        except SmallfirstError as exc:  # retrieval down: keep completing with the grounding we have
            log.warning("autocomplete grounding failed: %s", exc.message)
        except Exception:
            log.exception("autocomplete grounding failed")

    async def _switch(self, typist: Typist, chosen: Grounding, text: str) -> None:
        """Prefill ``chosen`` into a standby slot; once filled (and still the typist's), use it."""
        latest = typist.wanted[0] if typist.wanted else text
        standby = self._standby(typist, chosen, latest)
        if standby is None:
            return
        typist.standby = standby
        while not standby.finished:
            await standby.queue.get()
        typist.standby = None
        slot = standby.slot
        if standby.cancelled or standby.error is not None or not self._owners.owns(typist, slot):
            if self._owners.owns(typist, slot) and slot != typist.slot:
                self._owners.free(slot)
            typist.query = None  # stopped (a keystroke took its slot, say): the same words look it up again
            return
        old = typist.slot
        typist.slot, typist.grounding = slot, chosen
        if old is not None and old != slot:
            self._owners.free(old, typist)
