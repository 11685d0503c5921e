"""Graceful overload: an answer is admitted only when its predicted wait fits the budget; past it
the answer goes to the large tier (``small_unavailable``) or gets ``busy`` at once with
``retry_after_ms``. Real server, real stand-in large tier."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterator

import httpx
import pytest

from smallfirst.service.llm.admission import DEVIATIONS, TYPING_SLOWDOWN, LoadTimes, ServiceTimes
from tests.conftest import Server, serve_fixture_corpus, stand_in_large_tier
from tests.test_service import connected, of, recv

GROUNDED = "When does the lighthouse museum close?"
# With the priors (3 s counted for each request ahead, 0.5 s to the first token) an idle model
# predicts 0.5 s and one request ahead 3.5 s, both within the budget; two ahead predict 6.5 s.
BUDGET_S = 5.0


def test_predicted_wait_counts_the_holder_the_queue_and_the_prefill() -> None:
    times = ServiceTimes()
    per = times.per_request_s()
    assert per == pytest.approx(times.service_s + DEVIATIONS * times.deviation_s)
    idle = times.predicted_first_token_s(waiting=0, holder_elapsed_s=None)
    assert idle == times.first_token_s
    held = times.predicted_first_token_s(waiting=0, holder_elapsed_s=0.0)
    assert held == pytest.approx(per + times.first_token_s)
    assert times.predicted_first_token_s(waiting=3, holder_elapsed_s=0.0) == pytest.approx(held + 3 * per)
    # A holder that has run longer than the estimate says the model is slow now: each request
    # ahead counts as long as it has taken so far.
    assert times.predicted_first_token_s(2, holder_elapsed_s=99.0) == pytest.approx(2 * 99.0 + times.first_token_s)


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
    idle = times.predicted_first_token_s(2, None, typing=False)
    assert idle == pytest.approx(2 * times.idle.per_request_s() + 0.2)
    # Nothing measured under typing yet: the idle times, as many times longer as keystrokes may take.
    assert times.predicted_first_token_s(2, None, typing=True) == pytest.approx(TYPING_SLOWDOWN * idle)
    times.observe(6.0, 2.0, typed=True)
    assert times.predicted_first_token_s(1, None, typing=True) == pytest.approx(times.typing.per_request_s() + 2.0)
    assert times.predicted_first_token_s(2, None, typing=False) == pytest.approx(idle)  # kept apart


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
