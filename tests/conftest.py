"""Shared fixtures: the real embedder, a fixture corpus, and a real server process."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from smallfirst.service.scheduler import CpuScheduler
from smallfirst.threads import enable_checks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every model call off its owner's thread fails, here and in every server and CLI the tests start.
os.environ["SMALLFIRST_THREAD_CHECKS"] = "true"
enable_checks(True)

FIXTURE_DOCS = Path(__file__).parent / "fixtures" / "docs"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def scheduler() -> Iterator[CpuScheduler]:
    """The CPU scheduler the model tests of one module share."""
    s = CpuScheduler()
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def embedder():
    from smallfirst.retrieval.embedder import Embedder

    return Embedder(cache_size=64)


@pytest.fixture
def docs_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixture corpus."""
    target = tmp_path / "docs"
    shutil.copytree(FIXTURE_DOCS, target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smallfirst(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI."""
    return subprocess.run(
        [str(BIN / "smallfirst"), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )


@contextlib.contextmanager
def stand_in_large_tier(log: Path) -> Iterator[int]:
    """`python -m llama_cpp.server` on the bundled model under another name: a real
    OpenAI-compatible large tier on a free port (yielded once it answers)."""
    from smallfirst.service.llm.loading import bundled_model_path

    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()), "--model_alias",
             "stand-in-large", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048", "--chat_format", "gemma"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


class Server:
    """A real `smallfirst serve` process on a free port."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        # Answers are written, token by token, unless a test asks for picked ones: the tests of streaming,
        # cancellation, routing and the rest need an answer that streams (tests/test_trust.py picks).
        self.env = {"SMALLFIRST_DATA_DIR": str(data_dir), "SMALLFIRST_PORT": str(self.port),
                    "SMALLFIRST_ANSWER_PICK": "false", **(extra_env or {})}
        self.log = data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def token(self) -> str:
        """The token the server generated into its DATA_DIR at start (or the one it was given)."""
        return self.env.get("SMALLFIRST_API_TOKEN") or (Path(self.env["SMALLFIRST_DATA_DIR"]) / "api-token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        """Headers of an authorised non-browser client."""
        return {"Authorization": f"Bearer {self.token}"}

    def api(self, token: bool = True) -> httpx.Client:
        """An HTTP client for the service's API (with the token unless told otherwise)."""
        return httpx.Client(base_url=self.http, headers=self.auth if token else {}, timeout=30)

    def start(self, timeout: float = 180) -> "Server":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "smallfirst"), "serve"], env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.http + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log.read_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve_fixture_corpus(data_dir: Path, env: dict[str, str] | None = None, extra: tuple[Path, ...] = ()) -> Server:
    """The fixture corpus (and ``extra`` files) copied into ``data_dir``, ingested with the real CLI,
    and served by a real server process with ``env``; the caller stops it."""
    docs = data_dir / "docs"
    shutil.copytree(FIXTURE_DOCS, docs)
    for path in extra:
        shutil.copy2(path, docs / path.name)
    result = smallfirst("ingest", str(docs), "--no-progress", env={"SMALLFIRST_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    return Server(data_dir, env).start()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The fixture corpus ingested with the real CLI, served by a real server process."""
    srv = serve_fixture_corpus(tmp_path_factory.mktemp("served"))
    yield srv
    srv.stop()
