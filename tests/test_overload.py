"""Graceful overload: an answer is admitted only when its predicted wait fits the budget; past it
the answer goes to the large tier (``small_unavailable``) or gets ``busy`` at once with
``retry_after_ms``. Real server, real stand-in large tier."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterator

import httpx
import pytest

from service.llm.admission import ServiceTimes
from tests.conftest import Server, serve_fixture_corpus, stand_in_large_tier
from tests.test_service import connected, of, recv

GROUNDED = "When does the lighthouse museum close?"
BUDGET_S = 3.0  # with the priors (1.5 s a request, 0.5 s to the first token): two answers fit, a third does not


def test_predicted_wait_counts_the_holder_the_queue_and_the_prefill() -> None:
    times = ServiceTimes()
    idle = times.predicted_first_token_s(waiting=0, holder_elapsed_s=None)
    assert idle == times.first_token_s
    held = times.predicted_first_token_s(waiting=0, holder_elapsed_s=0.0)
    assert held == pytest.approx(times.service_s + times.first_token_s)
    assert times.predicted_first_token_s(waiting=3, holder_elapsed_s=0.0) == pytest.approx(held + 3 * times.service_s)
    # A holder past the average length is counted as about to finish, never as negative time.
    assert times.predicted_first_token_s(0, holder_elapsed_s=99.0) == idle


def test_the_first_measurement_replaces_the_prior_and_later_ones_are_smoothed() -> None:
    times = ServiceTimes()
    times.observe(4.0, 1.0)
    assert (times.service_s, times.first_token_s) == (4.0, 1.0)
    times.observe(2.0, None)  # no token: the first-token average stays
    assert 2.0 < times.service_s < 4.0 and times.first_token_s == 1.0


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


def test_over_budget_answers_escalate_or_get_busy_at_once(overloaded: Server) -> None:
    before = httpx.get(overloaded.http + "/api/stats", headers=overloaded.auth).json()["admission"]
    assert before["waiting"] == 0 and before["budget_s"] == BUDGET_S
    frames = asyncio.run(_burst(overloaded, [
        {"id": "a1", "question": GROUNDED}, {"id": "a2", "question": GROUNDED},
        {"id": "s1", "question": GROUNDED, "tier": "small"},  # only the small tier may serve it: refused
        {"id": "a3", "question": GROUNDED},  # a large tier exists: it answers instead
    ]))
    for admitted in ("a1", "a2"):
        kinds = [f["type"] for f in frames[admitted]]
        assert kinds[0] == "sources" and kinds[-1] == "done", frames[admitted]
        assert not any(f.get("reason") == "small_unavailable" for f in frames[admitted])
    refused = frames["s1"]
    assert [f["type"] for f in refused] == ["error"], refused  # no retrieval was spent on it
    assert refused[0]["code"] == "busy" and refused[0]["retryable"] is True and refused[0]["retry_after_ms"] > 0
    escalated = frames["a3"]
    assert [f for f in escalated if f["type"] == "escalated"][0]["reason"] == "small_unavailable", escalated
    assert escalated[-1]["type"] == "done" and escalated[-1]["tier"] == "large"
    stats = httpx.get(overloaded.http + "/api/stats", headers=overloaded.auth).json()
    assert stats["refused_over_budget"] == 1 and stats["escalations"]["small_unavailable"] == 1
    assert stats["admission"]["waiting"] == 0  # every reservation was given back
