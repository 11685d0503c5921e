"""The service's readiness: loads the :class:`Components` in the background, says how far that got."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from smallfirst.errors import Busy, SmallfirstError
from smallfirst.service.llm.loading import bundled_model_path
from smallfirst.service.scheduler import CpuScheduler
from smallfirst.service.core.components import Components
from smallfirst.service.core.stats import Stats
from smallfirst.settings import Settings

log = logging.getLogger(__name__)


class Runtime:
    """``state`` is loading, then ready or failed (with ``error``). The scheduler and the request
    stats exist from the start, so health, stats and metrics answer while loading."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scheduler = CpuScheduler()
        self.stats = Stats()
        self.state = "loading"
        self.error: str | None = None
        self.model_name = ""
        self.load_seconds = 0.0
        self._components: Components | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def components(self) -> Components | None:
        """The components once ready, else None (for the readers that also answer while loading)."""
        return self._components

    def require(self) -> Components:
        """The components; ``Busy`` while they load or when loading failed."""
        if self.state == "failed":
            raise Busy(f"the service failed to start: {self.error}")
        if self._components is None:
            raise Busy("the service is still loading its models; try again in a few seconds")
        return self._components

    def start(self) -> None:
        self.scheduler.start()
        self._task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        started = time.perf_counter()
        s = self.settings
        try:
            model_path = Path(s.model_path) if s.model_path else await asyncio.to_thread(bundled_model_path)
            self.model_name = model_path.name
            components = await Components.load(s, self.scheduler, self.stats, model_path)
        except SmallfirstError as exc:
            self._fail(exc.message)
            return
        except Exception as exc:  # anything else is a bug, but the health endpoints must still answer
            log.exception("loading failed")
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        self._components = components
        self.load_seconds = time.perf_counter() - started
        self.state = "ready"
        adapter = components.adapter
        log.info("ready in %.1f s: model %s%s, collection %r", self.load_seconds, model_path,
                 f" with the adapter {adapter.name}" if adapter is not None else "", s.collection)

    def _fail(self, message: str) -> None:
        self.state = "failed"
        self.error = message
        log.error("not ready: %s", message)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # it closes what it had loaded
        if self._components is not None:
            await self._components.close()
        self.scheduler.stop()
