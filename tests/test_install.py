"""A non-editable install (what the image runs): ``pip install .`` into a fresh venv, reusing
pip's wheel cache (llama-cpp-python is compiled once per machine), then the installed command
serves the demo page, /readyz and one answer, with no access to the source tree."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import FIXTURE_DOCS, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "README.md", "smallfirst", "service", "retrieval", "ingest", "web")


def run(*cmd: str, env: dict[str, str], cwd: Path, timeout: float) -> str:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.timeout(1800)
def test_a_non_editable_install_serves_the_page_and_answers(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: an in-tree build must not litter the checkout
    source.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():  # links as links: smallfirst/service and the like point at the folders beside
            shutil.copytree(ROOT / name, source / name, symlinks=True)
        else:
            shutil.copy2(ROOT / name, source / name)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "SMALLFIRST_"))}
    env["CMAKE_ARGS"] = re.search(r"^LLAMA_CMAKE_ARGS := (.+)$", (ROOT / "Makefile").read_text(), re.M)[1].strip()
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv), env=env, cwd=tmp_path, timeout=300)
    python = str(venv / "bin" / "python")
    # As the Makefile does: the CPU build of torch first, so nothing pulls another build.
    run(python, "-m", "pip", "install", "--quiet", "--no-compile", f"torch=={version('torch').split('+')[0]}", env=env, cwd=tmp_path, timeout=1200)
    # llama-cpp-python from the Makefile's own wheel folder (built for its flags), not pip's cache.
    wheel = run("make", "-s", "-C", str(ROOT), "llama-wheel", env=env, cwd=tmp_path, timeout=1200).strip().splitlines()[-1]
    run(python, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", wheel, env=env, cwd=tmp_path, timeout=600)
    run(python, "-m", "pip", "install", "--quiet", "--no-compile", str(source), env=env, cwd=tmp_path, timeout=1200)
    shutil.rmtree(source)  # from here on only the installed package exists
    where = run(python, "-c", "import smallfirst.service.server.app as a; print(a.__file__); print(a.WEB_DIR)", env=env, cwd=tmp_path, timeout=120)
    assert all(line.startswith(str(venv)) for line in where.split()), where
    site = Path(where.split()[0]).parents[3]  # .../site-packages/smallfirst/service/server/app.py
    assert (site / "smallfirst" / "retrieval" / "data").is_dir() and (site / "smallfirst" / "service" / "web").is_dir()
    generic = [name for name in ("service", "retrieval", "ingest", "web") if (site / name).exists()]
    assert not generic, f"installed at the top of site-packages: {generic}"

    data = tmp_path / "data"
    docs = tmp_path / "docs"
    shutil.copytree(FIXTURE_DOCS, docs)
    env.update(SMALLFIRST_DATA_DIR=str(data), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run(str(venv / "bin" / "smallfirst"), "ingest", str(docs), "--no-progress", env=env, cwd=tmp_path, timeout=600)
    port = free_port()
    env["SMALLFIRST_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([str(venv / "bin" / "smallfirst"), "serve"], env=env, cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.3)
        page = httpx.get(base + "/")
        assert page.status_code == 200 and "/static/demo.js" in page.text
        assert httpx.get(base + "/static/widget.js").status_code == 200
        token = (data / "api-token").read_text().strip()

        async def ask() -> list[dict]:
            async with websockets.connect(base.replace("http", "ws") + "/ws",
                                          additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send(json.dumps({"type": "ask", "id": "i1", "question": "When does the lighthouse museum close?"}))
                frames = []
                while not frames or frames[-1].get("type") not in ("done", "error"):
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
                return frames

        frames = asyncio.run(ask())
        assert frames[-1]["type"] == "done", frames
        assert any(f["type"] == "sources" and f["sources"] for f in frames)
        assert "".join(f["text"] for f in frames if f["type"] == "token").strip()
    finally:
        proc.terminate()
        proc.wait(30)
