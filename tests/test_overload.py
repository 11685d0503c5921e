"""Graceful overload: an answer is admitted only when its predicted wait fits the budget; past it
the answer goes to the large tier (``small_unavailable``) or gets ``busy`` at once with
``retry_after_ms``. Real server, real stand-in large tier."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any, Iterator

import httpx
import pytest

from smallfirst.errors import Busy
from smallfirst.service.llm.admission import DEVIATIONS, RELAX_S, TYPING_SLOWDOWN, LoadTimes, ModelQueue, ServiceTimes
from smallfirst.service.llm.base import GenerationStats
from tests.conftest import Server, serve_fixture_corpus, stand_in_large_tier
from tests.test_service import connected, of, recv, until_done

GROUNDED = "When does the lighthouse museum close?"
# With the priors (3 s counted for each request ahead) an idle model predicts no wait and one
# request ahead 3 s, both within the budget; two ahead predict 6 s.
BUDGET_S = 5.0


def test_predicted_wait_counts_the_holder_and_the_queue_but_not_the_own_prefill() -> None:
    times = ServiceTimes()
    per = times.per_request_s()
    assert per == pytest.approx(times.service_s + DEVIATIONS * times.deviation_s)
    assert times.predicted_wait_s(waiting=0, holder_elapsed_s=None) == 0.0  # a free model: no wait at all
    held = times.predicted_wait_s(waiting=0, holder_elapsed_s=0.0)
    assert held == pytest.approx(per)
    assert times.predicted_wait_s(waiting=3, holder_elapsed_s=0.0) == pytest.approx(held + 3 * per)
    # A holder that has run longer than the estimate says the model is slow now: each request
    # ahead counts as long as it has taken so far.
    assert times.predicted_wait_s(2, holder_elapsed_s=99.0) == pytest.approx(2 * 99.0)


def _hold(queue: ModelQueue, clock: list[float], seconds: float, first_token_s: float) -> None:
    """One request holds the model for ``seconds`` of the fake clock."""
    async def scenario() -> None:
        async with queue.turn(GenerationStats(), queue.admit(BUDGET_S)) as turn:
            clock[0] += seconds
            turn.first_token_s = first_token_s
    asyncio.run(scenario())


def test_an_idle_model_admits_however_slow_the_last_answer_was() -> None:
    clock = [0.0]
    queue = ModelQueue("small", limit=16, clock=lambda: clock[0])
    _hold(queue, clock, 60.0, 30.0)  # one answer far slower than any budget
    for _ in range(6):  # nothing runs and nothing waits: each is admitted at once, the budget tiny
        queue.admit(0.001).release()
    assert queue.waiting == 0


def test_a_slow_spell_fades_within_seconds_and_refusals_do_not_keep_it_alive() -> None:
    """After one very slow answer and none since, the wait predicted behind one queued request
    falls within the budget again after a bounded idle time, though every ask meanwhile is refused."""
    clock = [0.0]
    queue = ModelQueue("small", limit=16, clock=lambda: clock[0])
    _hold(queue, clock, 60.0, 30.0)
    ahead = queue.admit(BUDGET_S)  # admitted (the model is free); still retrieving, so it counts as queued
    refused = 0
    while True:
        try:
            queue.admit(BUDGET_S).release()
            break
        except Busy as busy:
            refused += 1
            assert busy.retry_after_ms is not None and busy.retry_after_ms >= 100
            assert refused <= 60, "the estimate never came down"
            clock[0] += 1.0  # asked again each second, refused each time until the estimate relaxed
    ahead.release()
    assert refused >= 1  # the slow answer counted at first
    assert clock[0] - 60.0 <= 8 * RELAX_S
    assert queue.times.idle.per_request_s() <= BUDGET_S
    # The next measurement blends into the relaxed estimate, not into the old slow one.
    _hold(queue, clock, 1.0, 0.3)
    assert queue.times.idle.per_request_s() < BUDGET_S


def test_the_first_measurement_replaces_the_prior_and_uneven_ones_widen_the_estimate() -> None:
    times = ServiceTimes()
    times.observe(4.0, 1.0)
    assert (times.service_s, times.first_token_s) == (4.0, 1.0)
    steady = ServiceTimes()
    for _ in range(20):
        steady.observe(2.0, 0.5)
    uneven = ServiceTimes()
    for i in range(20):
        uneven.observe(1.0 if i % 2 else 3.0, 0.5)
    assert steady.per_request_s() < 2.1 < uneven.per_request_s()
    uneven.observe(2.0, None)  # no token: the first-token average stays
    assert uneven.first_token_s == pytest.approx(0.5)


def test_while_someone_types_the_prediction_uses_the_times_measured_under_typing() -> None:
    times = LoadTimes()
    times.observe(1.0, 0.2, typed=False)
    idle = times.predicted_wait_s(2, None, typing=False)
    assert idle == pytest.approx(2 * times.idle.per_request_s())
    # Nothing measured under typing yet: the idle times, as many times longer as keystrokes may take.
    assert times.predicted_wait_s(2, None, typing=True) == pytest.approx(TYPING_SLOWDOWN * idle)
    times.observe(6.0, 2.0, typed=True)
    assert times.predicted_wait_s(1, None, typing=True) == pytest.approx(times.typing.per_request_s())
    assert times.predicted_wait_s(2, None, typing=False) == pytest.approx(idle)  # kept apart


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("overload")
    with stand_in_large_tier(base / "large.log") as port:
        srv = serve_fixture_corpus(base / "served", {
            "SMALLFIRST_LARGE_URL": f"http://127.0.0.1:{port}/v1", "SMALLFIRST_LARGE_MODEL": "stand-in-large",
            "SMALLFIRST_LARGE_MAX_TOKENS": "16", "SMALLFIRST_ANSWER_WAIT_BUDGET_S": str(BUDGET_S),
            "SMALLFIRST_MAX_INFLIGHT": "8",
        })
        yield srv
        srv.stop()


async def _burst(server: Server, asks: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Send every ask at once on one connection; the frames of each, up to its done or error."""
    async with await connected(server) as ws:
        for ask in asks:
            await ws.send(json.dumps({"type": "ask", **ask}))
        frames: list[dict[str, Any]] = []
        open_ids = {a["id"] for a in asks}
        while open_ids:
            frame = await recv(ws, 180)
            frames.append(frame)
            if frame.get("type") in ("done", "error"):
                open_ids.discard(frame.get("id"))
        await ws.send(json.dumps({"type": "ping", "ts": 1}))
        assert (await recv(ws, 30))["type"] == "pong"  # the socket survives the refusals
    return {a["id"]: of(frames, a["id"]) for a in asks}


@pytest.mark.slow
def test_over_budget_answers_escalate_or_get_busy_at_once(overloaded: Server) -> None:
    before = httpx.get(overloaded.http + "/api/stats", headers=overloaded.auth).json()["admission"]
    assert before["waiting"] == 0 and before["budget_s"] == BUDGET_S
    frames = asyncio.run(_burst(overloaded, [
        {"id": "a1", "question": GROUNDED}, {"id": "a2", "question": GROUNDED},
        {"id": "s1", "question": GROUNDED, "tier": "small"},  # only the small tier may serve it: refused
        {"id": "a3", "question": GROUNDED},  # a large tier exists: it answers instead
    ]))
    first = frames["a1"]  # the model was free: it never waited, so nothing could give it up
    assert [f["type"] for f in first][0] == "sources" and first[-1]["type"] == "done", first
    assert not any(f.get("reason") == "small_unavailable" for f in first) and first[-1]["tier"] == "small"
    # The second was admitted behind it. Had a1 held the model past the budget, a2 was given up in
    # the queue: it goes to the large tier after its sources, before any small token.
    second = frames["a2"]
    shed = any(f.get("reason") == "small_unavailable" for f in second)
    kinds = [f["type"] for f in second]
    assert kinds[0] == "sources" and kinds[-1] == "done", second
    if shed:
        assert kinds[1] == "escalated" and second[-1]["tier"] == "large", second
    refused = frames["s1"]
    assert [f["type"] for f in refused] == ["error"], refused  # no retrieval was spent on it
    assert refused[0]["code"] == "busy" and refused[0]["retryable"] is True and refused[0]["retry_after_ms"] > 0
    escalated = frames["a3"]
    assert [f for f in escalated if f["type"] == "escalated"][0]["reason"] == "small_unavailable", escalated
    assert escalated[-1]["type"] == "done" and escalated[-1]["tier"] == "large"
    stats = httpx.get(overloaded.http + "/api/stats", headers=overloaded.auth).json()
    assert stats["refused_over_budget"] == 1 and stats["escalations"]["small_unavailable"] == 1 + shed
    assert stats["admission"]["shed"] == shed
    assert stats["admission"]["waiting"] == 0  # every reservation was given back


# Below one cold answer's first token on the reference machine (about 0.7 s), and below the prior.
TIGHT_BUDGET_S = 0.3


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No large tier, and a wait budget shorter than any answer's own prefill."""
    srv = serve_fixture_corpus(tmp_path_factory.mktemp("tight") / "served", {
        "SMALLFIRST_ANSWER_WAIT_BUDGET_S": str(TIGHT_BUDGET_S), "SMALLFIRST_ANSWER_MAX_TOKENS": "12",
    })
    yield srv
    srv.stop()


async def _ask_in_turn(server: Server, count: int, prefix: str) -> list[list[dict[str, Any]]]:
    """``count`` asks one after another on one connection; the frames of each."""
    answers = []
    async with await connected(server) as ws:
        for i in range(count):
            request_id = f"{prefix}{i}"
            await ws.send(json.dumps({"type": "ask", "id": request_id, "question": GROUNDED}))
            answers.append(of(await until_done(ws, request_id, 180), request_id))
    return answers


@pytest.mark.slow
def test_a_budget_below_one_answers_prefill_still_answers_every_ask_on_an_idle_service(tight: Server) -> None:
    answers = asyncio.run(_ask_in_turn(tight, 6, "idle"))
    for frames in answers:
        assert frames[-1]["type"] == "done" and frames[-1]["tier"] == "small", frames
        assert not any(f["type"] == "error" for f in frames), frames
    assert httpx.get(tight.http + "/api/stats", headers=tight.auth).json()["admission"]["waiting"] == 0


@pytest.mark.slow
def test_after_a_spell_of_saturated_cpu_the_service_answers_again_without_a_restart(tight: Server) -> None:
    """Other processes take every core while three asks run (their answers are slow, whatever
    becomes of them); once they end, five asks in a row are answered."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        during = asyncio.run(_ask_in_turn(tight, 3, "spell"))
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert all(frames[-1]["type"] in ("done", "error") for frames in during)
    after = asyncio.run(_ask_in_turn(tight, 5, "after"))
    for frames in after:
        assert frames[-1]["type"] == "done" and frames[-1]["tier"] == "small", frames
