"""End to end through a real server process and a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from smallfirst.service.llm.loading import Tokenizer, bundled_model_path
from smallfirst.settings import Settings
from tests.conftest import Server
from tests.waiting import until, wait_for

pytestmark = pytest.mark.slow


async def recv(ws: Any, timeout: float = 60) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_done(ws: Any, request_id: str, timeout: float = 90) -> list[dict[str, Any]]:
    """Every frame up to this request's done or error (frames of other ids included)."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws, timeout)
        frames.append(frame)
        if frame.get("id") == request_id and frame["type"] in ("done", "error"):
            return frames


def of(frames: list[dict[str, Any]], request_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("id") == request_id and (kind is None or f["type"] == kind)]


async def connected(server: Server, **kw: Any):
    """An open, authorised WebSocket after its ready frame."""
    kw.setdefault("additional_headers", server.auth)
    ws = await websockets.connect(server.ws, max_size=None, **kw)
    ready = await recv(ws)
    assert ready["type"] == "ready" and ready["protocol"] == 1
    return ws


def answer_steps(server: Server, priority: str = "answer") -> float:
    """CPU scheduler steps run at ``priority`` (answer, by default) so far (from /metrics)."""
    with server.api() as api:
        response = api.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "smallfirst_scheduler_step_seconds_count" and sample.labels.get("priority") == priority:
                return sample.value
    return 0.0


def answer_stats(server: Server) -> dict[str, Any]:
    with server.api() as api:
        return api.get("/api/stats").json()


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(server.http + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.http + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["keystroke_copy"] is True  # keystrokes run on the copy with the narrow output layer
    page = httpx.get(server.http + "/")
    assert page.status_code == 200 and "/static/demo.js" in page.text
    assert httpx.get(server.http + "/static/widget.js").status_code == 200
    assert "/static/widget.js" in httpx.get(server.http + "/static/demo.js").text


def test_ask_streams_sources_then_tokens_then_done(server: Server) -> None:
    async def scenario():
        async with await connected(server) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "a1", "question": "When does the lighthouse museum close?"}))
            return await until_done(ws, "a1")
    frames = asyncio.run(scenario())
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "sources" and kinds[-1] == "done", kinds
    assert kinds.count("token") >= 3 and set(kinds) == {"sources", "token", "done"}
    sources = frames[0]["sources"]
    assert Path(sources[0]["doc_id"]).name == "lighthouse.md" and sources[0]["title"] == "Harbor Lighthouse"
    assert {"doc_id", "title", "uri", "chunk_index", "score", "snippet"} <= set(sources[0])
    tokens = of(frames, "a1", "token")
    assert [t["seq"] for t in tokens] == list(range(len(tokens)))
    done = frames[-1]
    assert done["finish"] in ("stop", "length") and done["tier"] == "small"
    assert done["usage"]["completion_tokens"] >= len(tokens) and done["usage"]["prompt_tokens"] > 50
    t = done["timings_ms"]
    assert set(t) >= {"queue", "embed", "search", "prefill", "first_token", "total"}
    assert 0 < t["first_token"] <= t["total"]


def test_source_link_serves_only_ingested_files(server: Server) -> None:
    async def scenario():
        async with await connected(server) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "s", "question": "sourdough starter feeding"}))
            return await until_done(ws, "s")
    source = asyncio.run(scenario())[0]["sources"][0]
    served = httpx.get(server.http + "/api/source", params={"doc_id": source["doc_id"]}, headers=server.auth)
    assert served.status_code == 200 and "Sourdough" in served.text
    assert httpx.get(server.http + "/api/source", params={"doc_id": "/etc/passwd"}, headers=server.auth).status_code == 404


def test_complete_streams_and_a_new_keystroke_cancels_the_previous(server: Server) -> None:
    async def scenario():
        async with await connected(server) as ws:
            await ws.send(json.dumps({"type": "complete", "id": "c1", "text": "The lighthouse museum opens at"}))
            first = await until_done(ws, "c1")
            await ws.send(json.dumps({"type": "complete", "id": "c2", "text": "Once upon a time", "max_tokens": 16}))
            await ws.send(json.dumps({"type": "complete", "id": "c3", "text": "Once upon a time there"}))
            frames = await until_done(ws, "c3")
            while not of(frames, "c2", "done"):
                frames.append(await recv(ws))
            return first, frames
    first, frames = asyncio.run(scenario())
    assert of(first, "c1", "token") and of(first, "c1", "done")[0]["finish"] in ("stop", "length")
    c2_done = of(frames, "c2", "done")[0]
    assert c2_done["finish"] == "cancelled"
    after_done = frames[frames.index(c2_done) + 1:]
    assert not of(after_done, "c2")  # nothing for c2 after its done
    assert of(frames, "c3", "token") and of(frames, "c3", "done")[0]["finish"] in ("stop", "length")


def test_a_superseded_suggestion_is_never_delivered(server: Server) -> None:
    async def scenario():
        async with await connected(server) as ws:
            # Text no document holds, so each suggestion takes model steps (a copied one needs none).
            await ws.send(json.dumps({"type": "complete", "id": "warm", "text": "The lighthouse visitors say it"}))
            await until_done(ws, "warm")
            frames = []
            for round_ in range(5):  # keystrokes closer together than one model step
                old, new = f"old{round_}", f"new{round_}"
                await ws.send(json.dumps({"type": "complete", "id": old, "text": "The lighthouse visitors say it is"}))
                await ws.send(json.dumps({"type": "complete", "id": new, "text": "The lighthouse visitors say it is n"}))
                frames += await until_done(ws, new)
                while not of(frames, old, "done"):
                    frames.append(await recv(ws))
            return frames
    frames = asyncio.run(scenario())
    for round_ in range(5):
        assert not of(frames, f"old{round_}", "token")  # not one token for text the user has changed
        assert of(frames, f"old{round_}", "done")[0]["finish"] == "cancelled"
        assert of(frames, f"new{round_}", "done")[0]["finish"] in ("stop", "length")


def test_a_keystroke_during_a_long_answer_goes_first(server: Server) -> None:
    async def scenario():
        async with await connected(server) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "long", "question": "Tell me everything about the Harbor Lighthouse.", "tier": "small"}))
            frames = []
            while len(of(frames, "long", "token")) < 3:  # the answer is decoding, one token per step
                frames.append(await recv(ws))
            results = []
            for i in range(3):
                await ws.send(json.dumps({"type": "complete", "id": f"k{i}", "text": "The lighthouse museum opens at" + " nine" * i}))
                between = 0
                while True:
                    frame = await recv(ws)
                    frames.append(frame)
                    if frame.get("id") == f"k{i}" and frame["type"] in ("token", "done", "error"):
                        break
                    between += frame.get("id") == "long" and frame["type"] == "token"
                results.append((frame, between))
                if frame["type"] == "token":
                    frames += await until_done(ws, f"k{i}")
            if not of(frames, "long", "done"):
                frames += await until_done(ws, "long")
            return results, frames
    results, frames = asyncio.run(scenario())
    for frame, between in results:
        assert frame["type"] == "token"
        # The answer step already running (and a frame already on the wire) at most.
        assert between <= 2, results
    assert of(frames, "long", "done")[0]["finish"] in ("stop", "length")  # the answer completes


def test_suggestions_are_grounded_in_the_documents(server: Server) -> None:
    text = "The lighthouse museum keeps the old lamp and the keeper's logbook; visitors climb the tower "

    async def scenario():
        async with await connected(server) as ws:
            sent = 0

            async def grounded() -> dict[str, Any] | None:
                """Another keystroke; its done frame if its suggestion was grounded."""
                nonlocal sent
                sent += 1
                await ws.send(json.dumps({"type": "complete", "id": f"g{sent}", "text": text + "and"[: sent % 3]}))
                done = of(await until_done(ws, f"g{sent}"), f"g{sent}", "done")[0]
                return done if done.get("grounding") else None
            # Retrieval and the new passage's prefill run in the background; keep typing until a suggestion uses it.
            done = await until(grounded, 60, "a suggestion is grounded in a retrieved passage")
            await ws.send(json.dumps({"type": "complete", "id": "next", "text": text + "and s"}))
            after = of(await until_done(ws, "next"), "next", "done")[0]
            return done, after
    done, after = asyncio.run(scenario())
    assert done is not None and done.get("grounding"), done
    assert done["grounding"]["title"] == "Harbor Lighthouse"
    usage = after["usage"]  # the keystroke after the switch reuses the prefilled passage
    assert usage["prompt_tokens"] > 60 and usage["prompt_tokens"] - usage["cached_tokens"] <= 4


# A long question: its prompt takes many prefill steps, so the cancel arrives well before they are done.
LONG_QUESTION = ("Tell me everything about Mount Kessler: " + "its eruptions, its summit crater and acid lake, the "
                 "seismographs on its northern flank and the tremors they record every week; " * 12)[:1900]


def test_cancel_stops_an_answer(server: Server) -> None:
    steps_before = answer_steps(server)

    async def scenario():
        async with await connected(server) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "long", "question": LONG_QUESTION, "tier": "small"}))
            frames = [await recv(ws)]
            assert frames[0]["type"] == "sources"  # the prompt is now being evaluated, step by step
            await ws.send(json.dumps({"type": "cancel", "id": "long"}))
            frames += await until_done(ws, "long")
            await ws.send(json.dumps({"type": "ping", "ts": 1}))
            pong = await recv(ws, 10)
            return frames, pong
    frames, pong = asyncio.run(scenario())
    done = of(frames, "long", "done")[0]
    assert done["finish"] == "cancelled" and not of(frames, "long", "token")
    assert done["usage"]["completion_tokens"] == 0  # stopped before its first token
    # It ran fewer answer steps than evaluating the question alone takes: the rest never ran.
    question_steps = Tokenizer(bundled_model_path()).count(LONG_QUESTION) / Settings.load({}).prefill_step_tokens
    ran = answer_steps(server) - steps_before
    assert question_steps >= 8 and ran < question_steps, (ran, question_steps, done["usage"])
    assert pong == {"type": "pong", "ts": 1}


@pytest.mark.parametrize("frame, code, request_id", [
    ("{not json", "bad_request", None),
    ("[1, 2]", "bad_request", None),
    ('{"id": "x"}', "bad_request", "x"),
    ('{"type": "teleport", "id": "x"}', "bad_request", "x"),
    ('{"type": "ask", "id": "x"}', "bad_request", "x"),
    ('{"type": "ask", "id": "x", "question": "   "}', "bad_request", "x"),
    ('{"type": "ask", "id": "x", "question": "hi", "top_k": 1000}', "bad_request", "x"),
    ('{"type": "ask", "id": "x", "question": "hi", "collection": "other"}', "bad_request", "x"),
    ('{"type": "complete", "text": "hi"}', "bad_request", None),
    ('{"type": "complete", "id": "x", "text": 5}', "bad_request", "x"),
    ('{"type": "ask", "id": "x", "question": "' + "q" * 2500 + '"}', "too_large", "x"),
])
def test_bad_input_gets_an_error_and_the_socket_stays_usable(server: Server, frame: str, code: str, request_id: Any) -> None:
    async def scenario():
        async with await connected(server) as ws:
            await ws.send(frame)
            error = await recv(ws, 10)
            await ws.send(json.dumps({"type": "ping", "ts": "still here"}))
            return error, await recv(ws, 10)
    error, pong = asyncio.run(scenario())
    assert error["type"] == "error" and error["code"] == code and error["id"] == request_id, error
    assert error["message"] and error["retryable"] is False
    assert pong["type"] == "pong"


def test_binary_and_oversized_frames(server: Server) -> None:
    async def scenario():
        async with await connected(server) as ws:
            await ws.send(b"\x00\x01")
            binary = await recv(ws, 10)
            await ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
            too_large = await recv(ws, 10)
            await ws.send(json.dumps({"type": "ping", "ts": 2}))
            pong = await recv(ws, 10)
        async with await connected(server) as ws:
            await ws.send("x" * 300_000)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(ws, 10)
        return binary, too_large, pong, closed.value
    binary, too_large, pong, closed = asyncio.run(scenario())
    assert binary["code"] == "bad_request" and too_large["code"] == "too_large" and pong["ts"] == 2
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    assert server.alive()


def test_duplicate_id_in_flight_is_refused(server: Server) -> None:
    async def scenario():
        async with await connected(server) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "d", "question": "Who won the chess club title?"}))
            await ws.send(json.dumps({"type": "ask", "id": "d", "question": "again"}))
            return await until_done(ws, "d")
    frames = asyncio.run(scenario())
    errors = of(frames, "d", "error")
    assert errors and "already in flight" in errors[0]["message"]


def test_foreign_origin_is_refused(server: Server) -> None:
    async def scenario():
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(server.ws, origin="https://evil.example")
        ws = await connected(server, origin=f"http://127.0.0.1:{server.port}")
        await ws.close()
    asyncio.run(scenario())


def test_closing_the_socket_stops_the_work(server: Server) -> None:
    cancelled = answer_stats(server)["finishes"].get("cancelled", 0)

    async def scenario():
        ws = await connected(server)
        await ws.send(json.dumps({"type": "ask", "id": "gone", "question": "Describe the volcano monitoring in detail."}))
        await recv(ws)
        await ws.close()
        # The abandoned answer (up to 200 tokens, several seconds) is not finished for nobody:
        # it ends as cancelled, and the next answer has the model.
        await until(lambda: answer_stats(server)["finishes"].get("cancelled", 0) == cancelled + 1, 30,
                    "the abandoned answer is recorded as cancelled")
        async with await connected(server) as ws2:
            await ws2.send(json.dumps({"type": "ask", "id": "next", "question": "Who was the club champion?"}))
            frames = await until_done(ws2, "next", timeout=60)
        return of(frames, "next", "done")[0]
    done = asyncio.run(scenario())
    assert done["finish"] in ("stop", "length"), done
    assert answer_stats(server)["finishes"].get("cancelled", 0) == cancelled + 1  # the only one cancelled


def test_text_typed_from_an_ingested_document_is_continued_from_it_with_no_model_step(server: Server) -> None:
    """A new typist's text that stands in an ingested document: its suggestion is the document's
    own continuation, copied with no model step."""
    typed = "Feed the starter every twelve hours with equal weights of r"

    async def scenario():
        async with await connected(server) as ws:
            before = answer_steps(server, "keystroke")
            await ws.send(json.dumps({"type": "complete", "id": "c1", "text": typed}))
            frames = of(await until_done(ws, "c1"), "c1")
            return frames, answer_steps(server, "keystroke") - before
    frames, steps = asyncio.run(scenario())
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    done = frames[-1]
    assert text == "ye flour and water at 24 degrees Celsius.", frames
    assert done["type"] == "done" and done["copied"]["title"] == "Sourdough Bread", done
    assert steps == 0 and done["usage"]["completion_tokens"] == 0


BELLS = ("old bell", "watch bell", "fog bell", "harbour clock", "quay horn", "ferry bell")
OCCASIONS = ("the tide turns", "a ship comes in", "the fog rolls over the quay", "the fishing fleet returns",
             "the harbour gates close")
HARBOUR_NOTES = [f"Down at the harbour quay the {bell} rings when {occasion}." for bell in BELLS for occasion in OCCASIONS][:24]


def test_text_whose_words_stand_in_a_passage_is_copied_even_where_its_meaning_points_elsewhere(server: Server) -> None:
    """Search by meaning ranks two dozen notes on the harbour's bells above the bakery page for
    these harbour words; the bakery page, which holds them as written, is found by its words and
    copied from."""
    files = [("files", (f"harbour-{i}.md", f"# Harbour note {i}\n\n{text}\n".encode(), "text/markdown"))
             for i, text in enumerate(HARBOUR_NOTES)]
    files.append(("files", ("bakery.md", b"# The corner bakery\n\nThe ovens are lit before dawn and the rye loaves "
                            b"rest in wicker baskets. When the harbour bell rings at noon the baker closes the shutters "
                            b"for a long lunch, and opens again at three.\n", "text/markdown")))
    with server.api() as api:
        job = api.post("/api/ingest", files=files, data={"collection": "harbour"})
        assert job.status_code == 202, job.text
        done = wait_for(lambda: (state := api.get(f"/api/ingest/{job.json()['id']}").json())["state"]
                        not in ("queued", "running") and state, 300, "the upload is ingested")
    assert done["state"] == "done", done
    typed = "Down at the quay, when the harbour bell rings at n"

    async def scenario():
        async with await connected(server) as ws:
            before = answer_steps(server, "keystroke")
            await ws.send(json.dumps({"type": "complete", "id": "c1", "text": typed, "collection": "harbour"}))
            frames = of(await until_done(ws, "c1"), "c1")
            return frames, answer_steps(server, "keystroke") - before
    frames, steps = asyncio.run(scenario())
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    assert text == "oon the baker closes the shutters for a long lunch,", frames
    assert frames[-1]["copied"]["title"] == "The corner bakery" and steps == 0, frames[-1]
