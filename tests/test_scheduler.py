"""The CPU scheduler's lifecycle: stopping fails what is still queued instead of leaving it hanging."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.scheduler import CpuScheduler, Priority, SchedulerClosed


def test_stop_fails_queued_jobs_and_lets_the_running_one_finish() -> None:
    async def scenario() -> tuple[object, list[BaseException | object]]:
        scheduler = CpuScheduler()
        scheduler.start()
        started, release = threading.Event(), threading.Event()

        def blocking() -> str:
            started.set()
            release.wait(30)
            return "finished"

        running = asyncio.ensure_future(scheduler.run(Priority.ANSWER, blocking))
        await asyncio.to_thread(started.wait, 30)
        queued = [asyncio.ensure_future(scheduler.run(Priority.INGEST, lambda: "never")) for _ in range(3)]
        await asyncio.sleep(0)  # one turn of the loop: each task runs to its first await, which queues its job
        scheduler.stop(timeout=0)
        release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 30)
        value = await asyncio.wait_for(running, 30)
        with pytest.raises(SchedulerClosed):
            await scheduler.run(Priority.ANSWER, lambda: None)
        return value, outcomes

    value, outcomes = asyncio.run(scenario())
    assert value == "finished"
    assert all(isinstance(o, SchedulerClosed) for o in outcomes), outcomes
