"""The CPU scheduler's lifecycle: stopping fails what is still queued instead of leaving it hanging."""

from __future__ import annotations

import asyncio
import threading

import pytest

from smallfirst.service.scheduler import CpuScheduler, Priority, SchedulerClosed


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


def test_an_answer_step_is_passed_over_by_at_most_two_keystroke_steps() -> None:
    async def scenario() -> list[str]:
        scheduler = CpuScheduler(answer_every=2)
        scheduler.start()
        started, release = threading.Event(), threading.Event()
        order: list[str] = []

        def blocking() -> None:
            started.set()
            release.wait(30)

        first = asyncio.ensure_future(scheduler.run(Priority.KEYSTROKE, blocking))
        await asyncio.to_thread(started.wait, 30)
        jobs = [asyncio.ensure_future(scheduler.run(Priority.KEYSTROKE, order.append, f"k{i}")) for i in range(5)]
        jobs.append(asyncio.ensure_future(scheduler.run(Priority.ANSWER, order.append, "a")))
        jobs.append(asyncio.ensure_future(scheduler.run(Priority.INGEST, order.append, "ingest")))
        await asyncio.sleep(0)  # one turn of the loop: each task runs to its first await, which queues its job
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *jobs), 30)
        scheduler.stop()
        return order

    assert asyncio.run(scenario()) == ["k0", "k1", "a", "k2", "k3", "k4", "ingest"]
