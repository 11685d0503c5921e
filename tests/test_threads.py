"""The thread ownership check: a model called from a thread other than its creator's fails (on
in the tests, so any call moved off the scheduler thread fails the suite)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from smallfirst.retrieval.embedder import Embedder
from smallfirst.service.llm.local import LocalBackend
from smallfirst.service.llm.loading import Tokenizer, bundled_model_path
from smallfirst.service.llm.slots import SlotContext
from smallfirst.service.scheduler import Priority
from smallfirst.threads import OwnerThread, ThreadViolation, checks_enabled, enable_checks


def call_from_another_thread(fn) -> BaseException | None:
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return failure[0] if failure else None


def test_the_owner_passes_another_thread_fails_and_off_means_off() -> None:
    owner = OwnerThread("Thing")
    owner.check("call")  # the creating thread
    assert isinstance(call_from_another_thread(lambda: owner.check("call")), ThreadViolation)
    assert checks_enabled()
    enable_checks(False)
    try:
        assert call_from_another_thread(lambda: owner.check("call")) is None
    finally:
        enable_checks(True)


@pytest.mark.slow
def test_models_made_on_the_scheduler_refuse_calls_from_the_event_loop(scheduler) -> None:
    path = bundled_model_path()

    async def scenario() -> list[str]:
        slots = await scheduler.run(Priority.CONTROL, SlotContext, path, 2, 256, 0)
        embedder = await scheduler.run(Priority.CONTROL, Embedder)
        tokenizer = await scheduler.run(Priority.CONTROL, Tokenizer, path)
        backend = await LocalBackend.load("small", path, 256, 0, scheduler, Priority.ANSWER, prefill_step=32, queue_limit=4)
        refused = []
        for what, call in [
            ("slots.tokenize", lambda: slots.tokenize("hello", add_bos=True)),
            ("slots.decode", lambda: slots.decode([])),
            ("embedder.embed_query", lambda: embedder.embed_query("hello")),
            ("embedder.token_vectors", lambda: embedder.token_vectors(["hello"])),
            ("tokenizer.count", lambda: tokenizer.count("hello")),
            ("backend._prepare", lambda: backend._prepare("hello", 4, ())),
        ]:
            with pytest.raises(ThreadViolation):
                call()  # on the event loop's thread
            refused.append(what)
        # The same calls on the scheduler thread are fine.
        assert await scheduler.run(Priority.ANSWER, slots.tokenize, "hello", True)
        assert (await scheduler.run(Priority.ANSWER, embedder.embed_query, "hello")).shape == (embedder.dimension,)
        assert await scheduler.run(Priority.ANSWER, tokenizer.count, "hello") > 0
        assert embedder.cached("hello") is not None  # a cache look-up runs no model: any thread
        await scheduler.run(Priority.CONTROL, slots.close)
        return refused

    assert len(asyncio.run(scenario())) == 6
