"""Prometheus metrics and JSON logs, through a real server process with JSON logs turned on."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from smallfirst.service.server import logs
from tests.conftest import Server, serve_fixture_corpus
from tests.test_service import connected, of, until_done

pytestmark = pytest.mark.slow

Sample = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = serve_fixture_corpus(tmp_path_factory.mktemp("observed"), {"SMALLFIRST_LOG_FORMAT": "json"})
    yield srv
    srv.stop()


def scrape(server: Server) -> dict[Sample, float]:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    with server.api() as api:
        response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def moved(before: dict[Sample, float], after: dict[Sample, float], prefix: str) -> dict[Sample, float]:
    """The samples named ``prefix...`` whose value changed, with the change."""
    return {key: round(value - before.get(key, 0.0), 9) for key, value in after.items()
            if key[0].startswith(prefix) and value != before.get(key, 0.0)}


def key(name: str, **labels: str) -> Sample:
    return (name, tuple(sorted(labels.items())))


def one_ask_and_one_complete(server: Server) -> list[dict[str, Any]]:
    async def scenario() -> list[dict[str, Any]]:
        async with await connected(server) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "obs-a1", "question": "When does the lighthouse museum close?",
                                      "tier": "small"}))
            frames = await until_done(ws, "obs-a1")
            await ws.send(json.dumps({"type": "complete", "id": "obs-c1", "text": "The lighthouse museum", "max_tokens": 6}))
            return frames + await until_done(ws, "obs-c1")
    return asyncio.run(scenario())


def test_metrics_need_the_token(json_server: Server) -> None:
    with json_server.api(token=False) as api:
        assert api.get("/metrics").status_code == 401
        assert api.get("/metrics", headers={"Origin": "https://evil.example", **json_server.auth}).status_code == 403


def test_one_ask_and_one_complete_move_exactly_their_series(json_server: Server) -> None:
    before = scrape(json_server)
    frames = one_ask_and_one_complete(json_server)
    after = scrape(json_server)
    ask, complete = of(frames, "obs-a1", "done")[0], of(frames, "obs-c1", "done")[0]
    tokens = {rid: len(of(frames, rid, "token")) for rid in ("obs-a1", "obs-c1")}
    assert tokens["obs-a1"] >= 2 and tokens["obs-c1"] >= 1, frames

    assert moved(before, after, "smallfirst_requests_total") == {
        key("smallfirst_requests_total", kind="ask", tier="small", outcome=ask["finish"]): 1,
        key("smallfirst_requests_total", kind="complete", tier="small", outcome=complete["finish"]): 1,
    }
    for name in ("smallfirst_time_to_first_token_seconds_count", "smallfirst_request_duration_seconds_count"):
        assert moved(before, after, name) == {key(name, kind="ask", tier="small"): 1,
                                              key(name, kind="complete", tier="small"): 1}
    assert moved(before, after, "smallfirst_inter_token_seconds_count") == {
        key("smallfirst_inter_token_seconds_count", kind=k, tier="small"): n - 1
        for k, n in (("ask", tokens["obs-a1"]), ("complete", tokens["obs-c1"])) if n > 1}
    assert moved(before, after, "smallfirst_time_to_sources_seconds_count") == {key("smallfirst_time_to_sources_seconds_count"): 1}
    assert moved(before, after, "smallfirst_scheduler_wait_seconds_count") == {
        key("smallfirst_scheduler_wait_seconds_count", kind="ask"): 1,
        key("smallfirst_scheduler_wait_seconds_count", kind="complete"): 1}
    prompt = ask["usage"]["prompt_tokens"] + complete["usage"]["prompt_tokens"]
    completion = ask["usage"]["completion_tokens"] + complete["usage"]["completion_tokens"]
    assert moved(before, after, "smallfirst_tokens_total") == {
        key("smallfirst_tokens_total", tier="small", type="prompt"): prompt,
        key("smallfirst_tokens_total", tier="small", type="completion"): completion}
    assert moved(before, after, "smallfirst_escalations_total") == {}
    assert moved(before, after, "smallfirst_fallbacks_total") == {}
    # The model steps ran on the scheduler and were timed there.
    steps = moved(before, after, "smallfirst_scheduler_step_seconds_count")
    assert steps.get(key("smallfirst_scheduler_step_seconds_count", priority="answer"), 0) >= 1
    assert steps.get(key("smallfirst_scheduler_step_seconds_count", priority="keystroke"), 0) >= 1
    # Gauges: both requests finished, the connection closed.
    assert after[key("smallfirst_requests_in_flight", kind="ask")] == 0
    assert after[key("smallfirst_requests_in_flight", kind="complete")] == 0
    assert after[key("smallfirst_connections")] == 0
    assert after[key("smallfirst_breaker_state", state="closed")] == 0  # no large tier configured
    assert key("smallfirst_answer_queue_depth") in after and key("smallfirst_autocomplete_slots_in_use") in after
    assert key("smallfirst_ingest_jobs", state="running") in after and key("smallfirst_ingest_files_total", result="added") in after


def test_a_reused_id_counts_each_request_once(json_server: Server) -> None:
    """A client that reuses a superseded suggestion's id: both requests are counted, none stays in flight."""
    async def scenario() -> list[dict[str, Any]]:
        async with await connected(json_server) as ws:
            for text in ("The lighthouse", "The lighthouse museum"):
                await ws.send(json.dumps({"type": "complete", "id": "same", "text": text, "max_tokens": 4}))
            frames: list[dict[str, Any]] = []
            while sum(1 for f in frames if f.get("type") in ("done", "error")) < 2:
                frames += await until_done(ws, "same")
            return frames

    before = scrape(json_server)
    finishes = sorted(f["finish"] for f in asyncio.run(scenario()) if f["type"] == "done")
    after = scrape(json_server)
    counted = moved(before, after, "smallfirst_requests_total")
    assert sum(counted.values()) == 2 and sorted(dict(k[1])["outcome"] for k in counted for _ in range(int(counted[k]))) == finishes
    assert after[key("smallfirst_requests_in_flight", kind="complete")] == 0


def test_json_logs_carry_the_request_id_of_done(json_server: Server) -> None:
    frames = one_ask_and_one_complete(json_server)
    with json_server.api() as api:  # request lines with a query string
        api.get("/api/stats?probe=secret-in-the-url")

    async def handshake() -> None:
        async with websockets.connect(json_server.ws + "?probe=secret-in-the-ws-url", additional_headers=json_server.auth):
            pass
    asyncio.run(handshake())
    json_server.stop()  # flushes the log; the module's other tests ran before this one
    entries = [json.loads(line) for line in Path(json_server.log).read_text().splitlines()
               if line.startswith("{")]  # the one plain line is the CLI's "serving on" notice
    lines = Path(json_server.log).read_text().splitlines()
    assert sum(1 for line in lines if not line.startswith("{")) <= 1, lines[:5]
    finished = {e["request_id"]: e for e in entries if e.get("event") == "request"}
    for rid, kind in (("obs-a1", "ask"), ("obs-c1", "complete")):
        done = of(frames, rid, "done")[0]
        entry = finished[done["id"]]
        assert entry["kind"] == kind and entry["tier"] == done["tier"] and entry["finish"] == done["finish"]
        assert entry["timings_ms"] == done["timings_ms"] and "route_reason" in entry
        assert entry["connection_id"]
    assert finished["obs-a1"]["connection_id"] == finished["obs-c1"]["connection_id"]
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any(e.get("path") == "/api/stats" for e in access), access
    assert any(e.get("path") == "/ws" and e.get("method") == "WEBSOCKET" for e in entries)
    assert not any("secret-in-the" in line for line in lines)
    assert not any("?" in e["message"] for e in access)


def test_json_lines_keep_extras_ids_and_tracebacks() -> None:
    try:
        1 / 0
    except ZeroDivisionError:
        record = logging.LogRecord("smallfirst.x", logging.ERROR, __file__, 1, "failed %s", ("a1",), sys.exc_info())
    record.__dict__.update(kind="ask", route_reason=None, request_id="a1", connection_id=None)
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "failed a1" and entry["level"] == "error" and entry["kind"] == "ask"
    assert entry["route_reason"] is None and entry["request_id"] == "a1" and "connection_id" not in entry
    assert "ZeroDivisionError" in entry["exc"]
