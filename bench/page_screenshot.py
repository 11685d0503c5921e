"""The README's screenshot: the bundled docs ingested into a temporary store, the service started,
the demo page opened in headless Chromium, a sentence typed until its suggestion shows, a question
asked until its answer is done, then the page captured.

    python bench/page_screenshot.py --out docs/images/widget.png

Without ``--out`` the picture goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import websockets

from harness import ROOT, bench_env, free_port, ingest, service

TYPED = "To search your own documents, run "
QUESTION = "How do I ingest a folder of my own documents?"


async def wait(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting until {what}")
        await asyncio.sleep(0.1)


async def capture(debugger: str, url: str) -> bytes:
    async with websockets.connect(debugger, max_size=None) as ws:
        counter = 0

        async def call(method: str, **params: Any) -> Any:
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if msg.get("id") == counter:
                    if "error" in msg:
                        raise RuntimeError(msg["error"])
                    return msg.get("result")

        async def js(expression: str) -> Any:
            result = await call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
            return result["result"].get("value")

        await call("Emulation.setDeviceMetricsOverride", width=1100, height=900, deviceScaleFactor=1, mobile=False)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        await wait(lambda: js("(document.getElementById('status')?.textContent ?? '').includes('connected')"), 30,
                   "the widget is connected")
        await js("document.getElementById('editor').focus()")
        for ch in TYPED:
            await call("Input.insertText", text=ch)
            await asyncio.sleep(0.08)
        await wait(lambda: js("document.querySelector('.ghost').textContent.trim().length > 0"), 30, "a suggestion shows")
        await js(f"document.getElementById('question').value = {json.dumps(QUESTION)};"
                 "document.getElementById('ask').requestSubmit()")
        await wait(lambda: js("document.getElementById('stop').disabled === false"), 30, "the question is asked")
        await wait(lambda: js("document.getElementById('stop').disabled === true"
                              " && document.getElementById('answer').textContent.trim().length > 0"), 120,
                   "the answer is done")
        await js("document.getElementById('editor').focus()")
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Where to write the PNG (default: a temporary folder).")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium installed (apt-get install chromium)")
    work = Path(tempfile.mkdtemp(prefix="smallfirst-shot-"))
    out = args.out or work / "widget.png"
    env = bench_env(work / "data")
    ingest(ROOT / "docs", env)
    with service(env) as port:
        debug_port = free_port()
        proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                 f"--remote-debugging-port={debug_port}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    targets = httpx.get(f"http://127.0.0.1:{debug_port}/json", timeout=2).json()
                    debugger = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
                    break
                except (httpx.HTTPError, StopIteration, ValueError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            png = asyncio.run(capture(debugger, f"http://127.0.0.1:{port}/"))
        finally:
            proc.terminate()
            proc.wait(10)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    print(f"screenshot {out} bytes={len(png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
