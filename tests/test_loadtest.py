"""The load-test command: figures, reports and exit codes against a real server, and resilience
against a server that answers busy or drops connections."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import websockets

from smallfirst.service.tools.loadtest.samples import ProtocolChecker
from smallfirst.service.tools.loadtest.summary import failed_conditions, parse_condition, percentile
from tests.conftest import Server, free_port, smallfirst


def test_percentiles_and_conditions() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5 and percentile(values, 99) == pytest.approx(99.01)
    assert percentile([], 50) is None
    assert parse_condition("p95_ttft_ms>300") == ("p95_ttft_ms", ">", 300.0)
    with pytest.raises(ValueError):
        parse_condition("p95 ttft is high")
    metrics = {"p95_ttft_ms": 320.0, "error_rate": 0.0}
    assert failed_conditions([("p95_ttft_ms", ">", 300.0)], metrics)
    assert not failed_conditions([("p95_ttft_ms", ">", 400.0), ("error_rate", ">", 0.0)], metrics)
    assert failed_conditions([("nonexistent", "<", 1.0)], metrics)  # a gate never passes blind


def test_protocol_checker_counts_violations() -> None:
    checker = ProtocolChecker()
    checker.opened("a")
    assert checker.check({"type": "token", "id": "a", "seq": 0, "text": "x"})
    assert not checker.check({"type": "token", "id": "a", "seq": 2, "text": "y"})  # out of order
    assert checker.check({"type": "done", "id": "a"})
    assert not checker.check({"type": "token", "id": "a", "seq": 3, "text": "z"})  # after done
    assert not checker.check({"type": "token", "id": "ghost", "seq": 0, "text": "?"})  # unknown id
    assert len(checker.errors) == 3


def load(target: Server | str, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the loadtest against a real server (which it finds the token of in its DATA_DIR) or a URL."""
    out = tmp_path / "run.json"
    url, env = (target.ws, {"SMALLFIRST_DATA_DIR": target.env["SMALLFIRST_DATA_DIR"]}) if isinstance(target, Server) else (target, {})
    result = smallfirst("loadtest", "--url", url, "--json", str(out), "--seed", "3", *args, env=env, timeout=240)
    data = json.loads(out.read_text()) if out.exists() else {}
    return result.returncode, data, result.stdout + result.stderr


def ordered(d: dict[str, Any]) -> bool:
    values = [d[k] for k in ("p50", "p95", "p99", "max")]
    return None not in values and values == sorted(values)


@pytest.mark.slow
def test_open_loop_ask_run(server: Server, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    questions = tmp_path / "questions.txt"
    questions.write_text("When does the lighthouse museum close?\nHow often should the sourdough starter be fed?\n"
                         "How many tremors are recorded on Mount Kessler each week?\n")
    code, data, output = load(server, tmp_path, "--workload", "ask", "--rate", "1.5", "--duration", "6",
                              "--questions", str(questions), "--report", str(report), "--fail-if", "p50_ttft_ms>600000")
    assert code == 0, output
    s = data["summary"]["ask"]
    assert s["sent"] >= 3
    assert s["sent"] == s["completed"] + s["cancelled"] + sum(s["errors"].values()) + s["timeouts"]
    assert ordered(s["ttft_ms"]) and ordered(s["e2e_ms"]) and ordered(s["sources_ms"]) and ordered(s["itl_ms"])
    assert s["sources_ms"]["p50"] <= s["ttft_ms"]["p50"] <= s["e2e_ms"]["p50"]
    assert s["tiers"] and s["tokens"] > 0 and 0 <= s["goodput"] <= 1
    assert data["protocol_errors"] == [] and len(data["samples"]) == s["sent"]
    html = report.read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") >= 3 and "time to first token" in html
    assert "ttft p50" in output


@pytest.mark.slow
def test_typing_run_and_fail_if(server: Server, tmp_path: Path) -> None:
    code, data, output = load(server, tmp_path, "--workload", "type", "--rate", "0.5", "--duration", "4",
                              "--chars-per-s", "3", "--fail-if", "type.p50_ttft_ms>0")
    assert code == 1 and "fail-if held: type.p50_ttft_ms>0" in output
    s = data["summary"]["type"]
    assert s["sent"] >= 5 and s["delivered"] + s["stale_dropped"] <= s["sent"]
    assert s["delivered"] > 0 and ordered(s["ttft_ms"])
    assert data["protocol_errors"] == []


@pytest.mark.slow
def test_closed_loop_mixed_run(server: Server, tmp_path: Path) -> None:
    code, data, output = load(server, tmp_path, "--workload", "ask:1,type:1", "--concurrency", "2",
                              "--duration", "4", "--chars-per-s", "12")
    assert code == 0, output
    assert data["summary"]["all"]["sent"] == data["summary"]["ask"]["sent"] + data["summary"]["type"]["sent"]


class FaultyServer:
    """Speaks just enough protocol to fail on purpose: odd requests get 'busy', even ones see the
    connection dropped. A real server cannot be made to do this on demand."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._count = 0
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            async with websockets.serve(self._handle, "127.0.0.1", self.port):
                await asyncio.Future()
        self._loop.run_until_complete(main())

    async def _handle(self, ws: Any) -> None:
        await ws.send(json.dumps({"type": "ready", "protocol": 1}))
        async for raw in ws:
            frame = json.loads(raw)
            self._count += 1
            if self._count % 2:
                await ws.send(json.dumps({"type": "error", "id": frame["id"], "code": "busy", "message": "full", "retryable": True}))
            else:
                await ws.close()
                return


@pytest.mark.slow
def test_busy_and_dropped_connections_are_counted(tmp_path: Path) -> None:
    faulty = FaultyServer()
    code, data, output = load(faulty.url, tmp_path, "--workload", "ask", "--rate", "4", "--duration", "2",
                              "--fail-if", "error_rate>0.5")
    s = data["summary"]["ask"]
    assert s["sent"] >= 3 and s["completed"] == 0
    assert s["errors"].get("busy", 0) >= 1 and s["errors"].get("connection closed", 0) >= 1
    assert sum(s["errors"].values()) == s["sent"]
    assert code == 1 and "error_rate>0.5" in output  # every request failed: the gate holds


@pytest.mark.slow
def test_bad_arguments(tmp_path: Path) -> None:
    for args, word in ((["--rate", "0"], "must be positive"), (["--workload", "browse"], "unknown workload"),
                       (["--fail-if", "nonsense"], "cannot read condition")):
        result = smallfirst("loadtest", *args, env={})
        assert result.returncode == 2 and word in result.stderr, result.stderr


def test_busy_at_admission_and_busy_after_sources_are_counted_apart() -> None:
    from smallfirst.service.tools.loadtest.samples import Sample
    from smallfirst.service.tools.loadtest.summary import summarise

    refused = Sample("ask", "r", scheduled=0.0, sent=0.0, done=0.008, error="busy")
    shed = Sample("ask", "s", scheduled=0.0, sent=0.0, sources=0.02, done=1.5, error="busy")
    figures = summarise([refused, shed], window_s=10.0, slo_ttft_ms=1000.0, slo_itl_ms=200.0)
    assert figures["refusal_ms"]["n"] == 1 and figures["refusal_ms"]["max"] == 8.0
    assert figures["shed_ms"]["n"] == 1 and figures["shed_ms"]["max"] == 1500.0
    assert figures["errors"] == {"busy": 2}


def _type_against(reply: Any, profile: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """Type "abcd" with ``profile`` against a WebSocket server that records every frame, answers a
    suggestion with one token of ``reply(text)`` (none when it gives None), never ends one on
    its own, and ends each cancelled one."""
    import random
    import time

    from smallfirst.service.tools.loadtest.workloads import type_session

    frames: list[dict[str, Any]] = []

    async def handle(ws: Any) -> None:
        await ws.send(json.dumps({"type": "ready", "protocol": 1}))
        async for raw in ws:
            frame = json.loads(raw)
            frames.append(frame)
            if frame["type"] == "complete" and reply(frame["text"]) is not None:
                await ws.send(json.dumps({"type": "token", "id": frame["id"], "seq": 0, "text": reply(frame["text"])}))
            elif frame["type"] == "cancel":
                await ws.send(json.dumps({"type": "done", "id": frame["id"], "finish": "cancelled"}))

    async def run() -> list[Any]:
        port = free_port()
        async with websockets.serve(handle, "127.0.0.1", port):
            t0 = time.monotonic()
            return await type_session(f"ws://127.0.0.1:{port}/ws", None, "abcd", 0.0, "t", lambda: time.monotonic() - t0,
                                      0.5, ProtocolChecker(), profile, random.Random(0), warmup_until=0.0)

    return frames, asyncio.run(run())


def test_a_keystroke_cancels_a_suggestion_not_yet_shown() -> None:
    """The typing workload does what the widget does: the keystroke after a request cancels it when
    no token has come, a debounce before the next request would supersede it. The server here
    never answers a suggestion (a real one cannot be held back on demand) and records the frames."""
    from smallfirst.service.tools.loadtest.workloads import TypingProfile

    frames, samples = _type_against(lambda text: None, TypingProfile(chars_per_s=40.0, jitter=0.0, debounce_s=0.005,
                                                                     max_tokens=4))
    assert [(f["type"], f["id"]) for f in frames] == [
        ("complete", "t-0"), ("cancel", "t-0"), ("complete", "t-1"), ("cancel", "t-1"),
        ("complete", "t-2"), ("cancel", "t-2"), ("complete", "t-3"),
    ]
    assert [s.finish for s in samples[:3]] == ["cancelled"] * 3 and samples[3].timeout
    assert not any(s.delivered for s in samples)


@pytest.mark.parametrize(("keep", "first"), [(True, "bz"), (False, "bz"), (True, "b")])
def test_typing_into_a_suggestion_keeps_it_and_any_other_keystroke_cancels_it(keep: bool, first: str) -> None:
    """As the widget does: a keystroke that types the suggestion's next character keeps its rest
    and asks for nothing; one that leaves it cancels the request even after its text came. The
    server streams one token per suggestion and never ends one on its own. A suggestion typed to
    its end ("b" after "a") is not cancelled: the next pause asks again, superseding it."""
    from smallfirst.service.tools.loadtest.workloads import TypingProfile

    profile = TypingProfile(chars_per_s=4.0, jitter=0.0, debounce_s=0.005, max_tokens=4, keep_typed_into=keep)
    frames, samples = _type_against(lambda text: first if text == "a" else "q", profile)
    if keep and first == "bz":
        assert [(f["type"], f["id"]) for f in frames] == [
            ("complete", "t-0"), ("cancel", "t-0"), ("complete", "t-2"), ("cancel", "t-2"), ("complete", "t-3"),
        ]
        assert [s.text for s in samples] == ["bz", "q", "q"]
    else:  # the bench's typists, or a suggestion typed to its end: the pause after "ab" asks again
        assert [(f["type"], f["id"]) for f in frames] == [
            ("complete", "t-0"), ("complete", "t-1"), ("cancel", "t-1"), ("complete", "t-2"), ("cancel", "t-2"),
            ("complete", "t-3"),
        ]
    assert [s.delivered for s in samples[:2]] == [True, True]


def test_stale_suggestions_are_told_apart_by_whether_any_text_came() -> None:
    from smallfirst.service.tools.loadtest.samples import Sample
    from smallfirst.service.tools.loadtest.summary import summarise

    shown = Sample("type", "a", scheduled=0.0, sent=0.0, first_token=0.05, done=0.1, finish="stop", delivered=True)
    late = Sample("type", "b", scheduled=1.0, sent=1.0, first_token=1.4, done=1.5, finish="stop", stale=True)
    withdrawn = Sample("type", "c", scheduled=2.0, sent=2.0, done=2.1, finish="cancelled", stale=True)
    figures = summarise([shown, late, withdrawn], window_s=10.0, slo_ttft_ms=1000.0, slo_itl_ms=200.0)
    assert (figures["delivered"], figures["stale_dropped"], figures["arrived_late"]) == (1, 2, 1)
