"""The grounding threshold per collection: the setting when set, else calibrated on the collection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable, Mapping

import numpy as np

from smallfirst.retrieval.grounding_threshold import Calibration, calibrate, offtopic_questions, pseudo_questions
from smallfirst.service.core.retriever import Retriever
from smallfirst.settings import Settings

log = logging.getLogger(__name__)

CALIBRATION_SAMPLE_CHUNKS = 300


def grounding_report(settings: Settings, calibrations: Mapping[str, Calibration] = {},
                     calibrating: Iterable[str] = ()) -> dict[str, Any]:
    """The threshold in force per collection, and how it was found (for /api/stats)."""
    if settings.grounding_threshold is not None:
        return {"source": "setting", "threshold": settings.grounding_threshold}
    return {"source": "auto", "default_threshold": settings.grounding_threshold_or_default,
            "collections": {name: c.as_dict() for name, c in calibrations.items()},
            "calibrating": sorted(calibrating)}


class Calibrator:
    """Calibrates each collection in the background, once asked for its threshold and again after
    each ingest job that wrote to it."""

    def __init__(self, settings: Settings, retriever: Retriever) -> None:
        self.settings = settings
        self._retriever = retriever
        self.calibrations: dict[str, Calibration] = {}
        self._calibrating: dict[str, asyncio.Task[None]] = {}
        self._recalibrate: set[str] = set()
        self._offtopic_vectors: np.ndarray | None = None

    def threshold(self, collection: str | None) -> float | None:
        """The threshold for ``collection``: the setting when set, else its calibration (None
        until it exists, and then a calibration is started)."""
        if self.settings.grounding_threshold is not None:
            return self.settings.grounding_threshold
        name = collection or self.settings.collection
        found = self.calibrations.get(name)
        if found is None and name not in self._calibrating:
            self.schedule(name)
        return found.threshold if found is not None else None

    def schedule(self, collection: str) -> None:
        """Calibrate ``collection`` in the background (again once the running one ends, if one runs)."""
        if self.settings.grounding_threshold is not None:
            return
        if collection in self._calibrating:
            self._recalibrate.add(collection)
            return
        task = asyncio.get_running_loop().create_task(self._calibrate(collection))
        self._calibrating[collection] = task

    async def _calibrate(self, collection: str) -> None:
        retriever = self._retriever
        try:
            while True:
                self._recalibrate.discard(collection)
                store = await retriever.collection(collection)
                texts = await retriever.in_store_thread(lambda: store.sample_texts(CALIBRATION_SAMPLE_CHUNKS))
                questions = await asyncio.to_thread(pseudo_questions, texts, self.settings.calibration_questions)
                if not questions:
                    self.calibrations.pop(collection, None)
                else:
                    if self._offtopic_vectors is None:
                        self._offtopic_vectors = await retriever.embed_in_steps(offtopic_questions())
                    offtopic = self._offtopic_vectors
                    pseudo = await retriever.embed_in_steps(questions)
                    ungrounded = await retriever.in_store_thread(lambda: store.top_scores(offtopic))
                    grounded = await retriever.in_store_thread(lambda: store.top_scores(pseudo))
                    found = calibrate(ungrounded, grounded)
                    self.calibrations[collection] = found
                    log.info("collection %r: grounding threshold %.3f (margin %.3f, %d off-topic, %d pseudo-questions)",
                             collection, found.threshold, found.margin, len(ungrounded), len(grounded))
                if collection not in self._recalibrate:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the default threshold stays in force; say why
            log.warning("cannot calibrate collection %r: %s", collection, getattr(exc, "message", exc))
        finally:
            self._calibrating.pop(collection, None)

    def report(self) -> dict[str, Any]:
        """The threshold in force per collection, and how it was found (for /api/stats)."""
        return grounding_report(self.settings, self.calibrations, self._calibrating)

    def close(self) -> None:
        """Stop every calibration in progress."""
        for task in list(self._calibrating.values()):
            task.cancel()
