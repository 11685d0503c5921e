"""The widget in headless Chromium against the real server: ghost text, typing into a suggestion,
Tab, Escape, the adaptive debounce, and that an out-of-date suggestion is never painted.

Driven over the Chrome DevTools protocol. Skipped where no Chromium is installed, except under
``CI=true``, where a missing browser fails (``.ci/run`` installs Debian's ``chromium``). Locally:
``apt-get install chromium`` (or set ``SMALLFIRST_BROWSER`` to a Chrome binary), then
``pytest tests/test_widget.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import Server, free_port
from tests.waiting import until

pytestmark = pytest.mark.slow

BROWSER = (os.environ.get("SMALLFIRST_BROWSER") or shutil.which("chromium") or shutil.which("chromium-browser")
           or shutil.which("google-chrome"))

# Records every complete frame the page sends, the ids of done frames and the ts of pongs it
# receives, the page's socket, and every paint of the ghost text with the text then in the box
# and the text of the latest complete sent.
PROBE = """
window.__sent = [];
window.__cancels = [];
window.__lastId = null;
window.__done = [];
window.__pongs = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (!this.__probed) {
    this.__probed = true;
    window.__ws = this;
    this.addEventListener("message", (e) => {
      try {
        const f = JSON.parse(e.data);
        if (f.type === "done") window.__done.push(f.id);
        if (f.type === "pong") window.__pongs.push(f.ts);
      } catch {}
    });
  }
  try {
    const f = JSON.parse(data);
    if (f.type === "complete") { window.__sent.push(f.text); window.__lastId = f.id; }
    if (f.type === "cancel") window.__cancels.push(f.id);
  } catch {}
  return send.call(this, data);
};
window.__paints = [];
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver(() => {
    const ghost = document.querySelector(".ghost").textContent;
    if (ghost) window.__paints.push({ value: document.getElementById("editor").value, ghost,
                                      last: window.__sent[window.__sent.length - 1] ?? null });
  }).observe(document.querySelector(".ghost"), { childList: true, characterData: true, subtree: true });
});
"""


class Page:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, method: str, **params: Any) -> Any:
        self.n += 1
        me = self.n
        await self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg.get("result")

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:  # a script that threw did not do what the test meant
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def type(self, text: str, pause_s: float) -> None:
        """Type like a person: one character every ``pause_s`` (the typing itself is what is tested)."""
        for ch in text:
            await self.call("Input.insertText", text=ch)
            await asyncio.sleep(pause_s)

    async def key(self, key: str, code: int) -> None:
        await self.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code)
        await self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code)

    async def ghost(self) -> str:
        return await self.js("document.querySelector('.ghost').textContent")

    async def value(self) -> str:
        return await self.js("document.getElementById('editor').value")

    async def settled(self) -> None:
        """Wait until every frame the server sent so far has reached the page and been handled:
        a ping through the page's own socket is answered after them, in order."""
        self.n += 1
        ts = f"settled-{self.n}"
        await self.js(f"window.__ws.send(JSON.stringify({{type: 'ping', ts: '{ts}'}}))")
        await until(lambda: self.js(f"window.__pongs.includes('{ts}')"), 10, "the page's ping is answered")

    async def served(self, timeout_s: float = 30) -> None:
        """Wait until the page has asked for a suggestion for the text now in the box and its
        request is done (nothing more streams in for it)."""
        await until(lambda: self.js("window.__sent.length > 0 && window.__sent[window.__sent.length - 1] === "
                                    "document.getElementById('editor').value && window.__done.includes(window.__lastId)"),
                    timeout_s, "the suggestion for the text in the box is done")

    async def wait_ghost(self, timeout_s: float = 30) -> str:
        """The suggestion once it is painted and its request is done (nothing more streams in)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (await self.ghost()).strip() and await self.js("window.__done.includes(window.__lastId)"):
                return await self.ghost()
            await asyncio.sleep(0.05)
        return ""


async def open_page(ws: Any, server: Server, script: str, ready: str, what: str) -> Page:
    """The demo page in the browser tab behind ``ws``, with ``script`` run before its own, once
    the expression ``ready`` holds."""
    page = Page(ws)
    await page.call("Page.enable")
    await page.call("Page.addScriptToEvaluateOnNewDocument", source=script)
    await page.call("Page.navigate", url=server.http + "/")
    await until(lambda: page.js(ready), 20, what)
    return page


@pytest.fixture
def browser_page(server: Server):
    if BROWSER is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no Chromium installed: CI must run the browser test (apt-get install chromium)")
        pytest.skip("no Chromium installed (apt-get install chromium)")
    port = free_port()
    proc = subprocess.Popen(
        [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                page = next(t for t in targets if t["type"] == "page")
                break
            except (httpx.HTTPError, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield page["webSocketDebuggerUrl"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_widget_suggests_accepts_dismisses_and_never_paints_stale_text(server: Server, browser_page: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with websockets.connect(browser_page, max_size=None) as ws:
            page = await open_page(ws, server, PROBE,
                                   "(document.getElementById('status')?.textContent ?? '').includes('connected')",
                                   "the widget is connected")
            await page.js("document.getElementById('editor').focus()")
            out: dict[str, Any] = {}
            await page.type("The lighthouse museum opens at", 0.12)
            out["ghost"] = await page.wait_ghost()
            out["debounce"] = await page.js("document.getElementById('timing').textContent")
            assert out["ghost"].strip(), await page.js("({sent: window.__sent, last: window.__lastId, done: window.__done, "
                                                       "ghost: document.querySelector('.ghost').textContent})")
            # Type the suggestion's first character, a space or not: the rest stays, and no request goes out.
            sent = await page.js("window.__sent.length")
            await page.call("Input.insertText", text=out["ghost"][0])
            deadline = time.monotonic() + 5
            while await page.ghost() != out["ghost"][1:] and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            out["kept"] = (await page.ghost(), out["ghost"][1:], await page.js("window.__sent.length") - sent)
            ghost = await page.ghost()
            before = await page.value()
            await page.key("Tab", 9)
            out["accepted"] = (before, ghost, await page.value())
            # Type on until there is a suggestion to dismiss (the one right after the accepted text may be empty).
            await page.type(" and the", 0.12)
            out["to_dismiss"] = await page.wait_ghost()
            assert out["to_dismiss"].strip(), "no suggestion came to dismiss with Escape"
            paints = await page.js("window.__paints.length")
            await page.key("Escape", 27)
            await page.settled()  # whatever was on its way has arrived: nothing repaints the ghost
            out["after_escape"] = (await page.ghost(), await page.js("window.__paints.length") - paints)
            # Cut the text back while a suggestion for it is still streaming in.
            await page.js("window.__paints = []")
            for _ in range(4):
                await page.type(" and the", 0.12)
                deadline = time.monotonic() + 5
                while not (await page.ghost()).strip() and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                last = await page.js("window.__lastId")
                await page.js("{ const e = document.getElementById('editor'); e.value = e.value.slice(0, -6); "
                              "e.dispatchEvent(new Event('input')); }")
                # The cut moved the text off the suggestion: its request is cancelled at once.
                out.setdefault("cancelled", []).append(await page.js(f"window.__cancels.includes({json.dumps(last)})"))
                # The stale suggestion streams on meanwhile; the cut-back text gets its own.
                await page.served()
            out["paints"] = await page.js("window.__paints")
            return out

    out = asyncio.run(scenario())
    assert out["ghost"].strip(), out
    assert "debounce" in out["debounce"]
    ghost_after, expected, new_requests = out["kept"]
    assert expected, out  # a one-character suggestion would leave nothing to keep
    assert ghost_after == expected and new_requests == 0, out["kept"]
    before, ghost, after = out["accepted"]
    assert ghost and after == before + ghost  # Tab accepted the suggestion
    assert out["after_escape"] == ("", 0), out["after_escape"]
    assert out["paints"]  # suggestions were painted while the text was being cut back
    assert out["cancelled"] == [True] * 4, out["cancelled"]
    for paint in out["paints"]:  # every painted suggestion belongs to the text in the box
        assert paint["last"] is not None and paint["value"].startswith(paint["last"]), paint


# In the page: ask through the page's own widget module into a view of fresh elements, either over
# a real connection to the server or over a scripted transport that replays protocol frames (for
# the routes that need a configured large tier, an answer the check rejects, or a busy model).
ROUTE_HARNESS = """
window.__route = async (question, options, script) => {
  const { connect, askInto } = await import('/static/widget.js');
  const el = (tag) => document.createElement(tag);
  const view = { answer: el('p'), sources: el('ol'), meta: el('p'), route: el('p') };
  const lines = [];
  new MutationObserver(() => lines.push(view.route.textContent))
    .observe(view.route, { childList: true, characterData: true, subtree: true });
  let client;
  const asked = [];
  if (script) {
    let n = 0;
    client = {
      nextId: (prefix) => `${prefix}${++n}`,
      cancel() {},
      request(frame, on) {
        asked.push(frame);
        const frames = script[asked.length - 1] ?? [];
        frames.forEach((f, i) => setTimeout(() => on({ ...f, id: frame.id }), 10 * (i + 1)));
      },
    };
  } else {
    client = window.__client ??= connect();
    await new Promise((ok) => { const wait = () => (client.ready ? ok() : setTimeout(wait, 20)); wait(); });
  }
  await new Promise((ok) => { view.onDone = ok; askInto(view, client, question, options); });
  return { line: view.route.textContent, lines, asked: asked.map((f) => f.tier ?? null), meta: view.meta.textContent };
};
"""

DONE = {"type": "done", "finish": "stop", "usage": {"completion_tokens": 3, "prompt_tokens": 9},
        "timings_ms": {"first_token": 5, "total": 9}}


def test_the_route_line_says_in_plain_words_where_each_answer_came_from(server: Server, browser_page: str) -> None:
    unsupported_without_large = [[
        {"type": "sources", "sources": []}, {"type": "token", "seq": 0, "text": "Nine."},
        {"type": "escalated", "reason": "unsupported_answer", "tier": "large"},
        {"type": "fallback", "from": "large", "to": "small", "reason": "large_unconfigured"},
        {"type": "token", "seq": 1, "text": "\u201cThe museum closes at five.\u201d [1]"},
        {**DONE, "tier": "small", "supported": False, "flagged": True},
    ]]
    escalated_to_large = [[
        {"type": "sources", "sources": []}, {"type": "escalated", "reason": "hard_query", "tier": "large"},
        {"type": "token", "seq": 0, "text": "def price():"}, {**DONE, "tier": "large"},
    ]]
    busy_then_answered = [
        [{"type": "error", "code": "busy", "message": "the small model is busy", "retryable": True, "retry_after_ms": 300}],
        [{"type": "sources", "sources": []}, {"type": "token", "seq": 0, "text": "Five."},
         {**DONE, "tier": "small", "supported": True}],
    ]
    busy_twice = [busy_then_answered[0], busy_then_answered[0]]

    async def scenario() -> dict[str, Any]:
        async with websockets.connect(browser_page, max_size=None) as ws:
            page = await open_page(ws, server, ROUTE_HARNESS, "typeof window.__route === 'function'", "the page is loaded")

            async def route(question: str, options: dict[str, Any], script: Any = None) -> dict[str, Any]:
                return await page.js(f"window.__route({json.dumps(question)}, {json.dumps(options)}, "
                                     f"{json.dumps(script)})")
            return {
                "off_topic": await route("Who painted the Mona Lisa?", {}),  # the real server: no large tier
                "forced_small": await route("When does the lighthouse museum close?", {"tier": "small"}),
                "unsupported": await route("q", {}, unsupported_without_large),
                "large": await route("q", {}, escalated_to_large),
                "busy": await route("q", {}, busy_then_answered),
                "busy_twice": await route("q", {}, busy_twice),
            }

    out = asyncio.run(scenario())
    assert out["off_topic"]["line"] == ("Not covered by the documents, and no large model is configured "
                                        "to answer instead."), out["off_topic"]
    assert out["forced_small"]["line"] in ("Answered by the small model, as requested, and checked against the sources.",
                                           "Checked against the sources: not supported, so the closest passage is "
                                           "shown instead."), out["forced_small"]
    assert out["unsupported"]["line"] == ("Checked against the sources: not supported, so the closest passage "
                                          "is shown instead."), out["unsupported"]
    assert out["large"]["line"] == "Sent to the large model: the question is hard.", out["large"]
    busy = out["busy"]
    assert "The small model is busy; trying again in 1 s." in busy["lines"], busy
    assert len(busy["asked"]) == 2 and busy["line"] == "Answered by the small model, and checked against the sources."
    twice = out["busy_twice"]  # retried once only, then told plainly
    assert len(twice["asked"]) == 2 and twice["line"] == ("The small model is still busy; please try again in a "
                                                         "few seconds."), twice
