"""The ingestion worker inside a running service, the CLI that finds it, and crash safety."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import BIN, FIXTURE_DOCS, Server, smallfirst
from tests.test_service import connected, of, until_done
from tests.waiting import wait_for

pytestmark = pytest.mark.slow


def corpus(folder: Path, files: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        paragraphs = "\n\n".join(
            f"Station {i}-{p} records wind speed, rainfall and the temperature of the harbour water every hour. "
            f"Its sensor number {i * 100 + p} was calibrated in spring and reports to the regional office in block {p}."
            for p in range(12)
        )
        (folder / f"station-{i:03d}.md").write_text(f"# Weather station {i}\n\n{paragraphs}\n")
    return folder


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("live")
    shutil.copytree(FIXTURE_DOCS, data_dir / "docs")
    assert smallfirst("ingest", str(data_dir / "docs"), "--no-progress", env={"SMALLFIRST_DATA_DIR": str(data_dir)}).returncode == 0
    srv = Server(data_dir, {"SMALLFIRST_INGEST_ROOTS": str(tmp_path_factory.getbasetemp())}).start()
    yield srv
    srv.stop()


def test_cli_ingests_through_the_running_service(live: Server, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "comet.md").write_text("# Comet Valdra\n\nThe comet Valdra returns every 71 years; it was last seen in 1987.\n")
    result = smallfirst("ingest", str(extra), "--json", "--no-progress", env=live.env)
    assert result.returncode == 0, result.stderr
    assert "held by the service" in result.stderr and "already accessed" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["added"] == 1 and summary["chunks_written"] >= 1
    jobs = httpx.get(live.http + "/api/ingest", headers=live.auth).json()
    job = jobs[0]
    assert job["state"] == "done" and job["progress"] == 1.0 and job["summary"] == summary
    assert job["files_done"] == job["files_total"] == 1 and job["chunks_written"] == summary["chunks_written"]

    async def ask():
        async with await connected(live) as ws:
            await ws.send(json.dumps({"type": "ask", "id": "c", "question": "When was the comet Valdra last seen?"}))
            return await until_done(ws, "c")
    sources = of(asyncio.run(ask()), "c", "sources")[0]["sources"]
    assert Path(sources[0]["doc_id"]).name == "comet.md"
    again = smallfirst("ingest", str(extra), "--json", "--no-progress", env=live.env)
    assert json.loads(again.stdout)["unchanged"] == 1


def test_api_refuses_bad_jobs(live: Server, tmp_path: Path) -> None:
    for body in ({"path": "relative/folder"}, {"path": str(tmp_path / "missing")}, {"folder": "/x"}, [1]):
        answer = httpx.post(live.http + "/api/ingest", headers=live.auth, json=body)
        assert answer.status_code == 400 and answer.json()["code"] == "bad_request", answer.text
    bad_json = httpx.post(live.http + "/api/ingest", headers={**live.auth, "Content-Type": "application/json"}, content=b"{not json")
    assert bad_json.status_code == 400
    assert httpx.get(live.http + "/api/ingest/nope", headers=live.auth).status_code == 404


def job_state(server: Server, job_id: str) -> dict:
    answer = httpx.get(f"{server.http}/api/ingest/{job_id}", headers=server.auth)
    assert answer.status_code == 200, answer.text
    return answer.json()


def finished(server: Server, job_id: str, timeout: float = 300) -> dict:
    """The job's state once it is neither queued nor running."""
    return wait_for(lambda: (job := job_state(server, job_id))["state"] not in ("queued", "running") and job,
                    timeout, f"ingest job {job_id} ends")


def test_keystrokes_are_served_while_a_job_runs(live: Server, tmp_path: Path) -> None:
    files = 20
    folder = corpus(tmp_path / "stations", files)
    job = httpx.post(live.http + "/api/ingest", headers=live.auth, json={"path": str(folder)}).json()
    before = wait_for(lambda: (state := job_state(live, job["id"]))["state"] == "running" and state["files_done"] >= 1
                      and state, 120, "the job is running and has ingested its first file")

    async def type_during_job():
        async with await connected(live) as ws:
            served = []
            for i in range(6):
                await ws.send(json.dumps({"type": "complete", "id": f"k{i}", "text": "The weather station records"[: 12 + i]}))
                frames = await until_done(ws, f"k{i}", timeout=30)
                served.append(of(frames, f"k{i}", "done")[0])
            return served
    served = asyncio.run(type_during_job())
    after = job_state(live, job["id"])
    assert all(d["finish"] in ("stop", "length") and d["usage"]["completion_tokens"] >= 1 for d in served), served
    # The job was running before the first keystroke and still is after the last one was served.
    assert before["files_done"] < files and after["state"] == "running" and after["files_done"] < files, (before, after)
    done = finished(live, job["id"])
    assert done["state"] == "done" and done["summary"]["added"] == files and done["files_done"] > after["files_done"], done


def point_ids(data_dir: Path) -> set[str]:
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(data_dir / "qdrant"))
    try:
        points, _ = client.scroll("docs", limit=100_000, with_payload=False)
        return {str(p.id) for p in points}
    finally:
        client.close()


def test_sigkill_mid_ingest_then_rerun_is_exact(tmp_path: Path) -> None:
    folder = corpus(tmp_path / "stations", 30)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    assert smallfirst("ingest", str(folder), "--no-progress", env={"SMALLFIRST_DATA_DIR": str(clean)}).returncode == 0
    proc = subprocess.Popen([str(BIN / "smallfirst"), "ingest", str(folder)], stderr=subprocess.PIPE,
                            env={**os.environ, "SMALLFIRST_DATA_DIR": str(crashed)})
    seen = b""
    assert proc.stderr is not None
    while not re.search(rb"\| *([3-9]|\d\d)/30 ", seen):  # a few files in, well before the end
        chunk = proc.stderr.read1(4096)
        assert chunk, f"ingest ended before it could be killed: {seen[-500:]!r}"
        seen += chunk
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rerun = smallfirst("ingest", str(folder), "--json", "--no-progress", env={"SMALLFIRST_DATA_DIR": str(crashed)})
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["added"] + summary["changed"] >= 1 and summary["failed"] == []
    assert point_ids(crashed) == point_ids(clean)


def test_watch_mode_sees_add_change_delete(tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nThe first note is about apples.\n")
    proc = subprocess.Popen(
        [str(BIN / "smallfirst"), "ingest", str(folder), "--watch", "--json", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SMALLFIRST_DATA_DIR": str(tmp_path / "data")},
    )
    assert proc.stdout is not None and proc.stderr is not None

    def next_summary() -> dict:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        return json.loads(line)

    def put(name: str, text: str) -> None:
        """Write a file whole in one step: a write in two (create empty, then fill) may be seen half done."""
        staged = tmp_path / f"{name}.staged"
        staged.write_text(text)
        os.replace(staged, folder / name)

    try:
        assert next_summary()["added"] == 1
        while "watching" not in (line := proc.stderr.readline()):  # blocks until the next line
            assert line, "the watcher exited before it said it was watching"
        put("b.md", "# B\n\nThe second note is about bananas.\n")
        assert next_summary()["added"] == 1
        put("a.md", "# A\n\nThe first note is now about apricots.\n")
        assert next_summary()["changed"] == 1
        (folder / "b.md").unlink()
        summary = next_summary()
        assert summary["removed"] == 1 and summary["chunks_deleted"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_service_watches_folders(tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "a.md").write_text("# Kiln\n\nThe kiln fires pottery at 1200 degrees.\n")
    data = tmp_path / "data"
    data.mkdir()
    srv = Server(data, {"SMALLFIRST_WATCH_FOLDERS": str(folder)}).start()
    try:
        def jobs() -> list[dict]:
            return httpx.get(srv.http + "/api/ingest", headers=srv.auth).json()

        def settled(count: int) -> list[dict]:
            return wait_for(lambda: len(current := jobs()) >= count and all(j["state"] == "done" for j in current) and current,
                            30, f"{count} watch jobs have run")
        assert settled(1)[0]["summary"]["added"] == 1
        (folder / "b.md").write_text("# Glaze\n\nThe glaze is made of feldspar and silica.\n")
        assert settled(2)[0]["summary"]["added"] == 1
    finally:
        srv.stop()


def test_collections_keep_document_sets_apart(live: Server, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "soup.md").write_text("# Nettle soup\n\nPick young nettle tops in April and simmer them with potatoes for twenty minutes.\n")
    result = smallfirst("ingest", str(recipes), "--collection", "recipes", "--json", "--no-progress", env=live.env)
    assert result.returncode == 0 and json.loads(result.stdout)["added"] == 1, result.stderr

    async def ask(collection: str | None) -> list[dict]:
        frame = {"type": "ask", "id": "r", "question": "How long do I simmer the nettle soup?"}
        if collection:
            frame["collection"] = collection
        async with await connected(live) as ws:
            await ws.send(json.dumps(frame))
            return await until_done(ws, "r")
    in_recipes = of(asyncio.run(ask("recipes")), "r", "sources")[0]["sources"]
    assert [Path(s["doc_id"]).name for s in in_recipes] == ["soup.md"]
    in_default = of(asyncio.run(ask(None)), "r", "sources")[0]["sources"]
    assert "soup.md" not in [Path(s["doc_id"]).name for s in in_default]
    unknown = asyncio.run(ask("nonexistent"))
    assert unknown[-1]["type"] == "error" and "unknown collection" in unknown[-1]["message"]
    bad = asyncio.run(ask("../etc"))
    assert bad[-1]["code"] == "bad_request"


def test_uploaded_files_are_ingested(live: Server) -> None:
    files = [("files", ("kite.md", b"# Kites\n\nA delta kite flies best in winds of ten to twenty knots.\n", "text/markdown")),
             ("files", ("kite-notes.txt", b"Keep the kite line dry; wet lines stretch.\n", "text/plain"))]
    answer = httpx.post(live.http + "/api/ingest", headers=live.auth, files=files, data={"collection": "uploads"})
    assert answer.status_code == 202, answer.text
    job = finished(live, answer.json()["id"])
    assert job["state"] == "done" and job["summary"]["added"] == 2 and job["collection"] == "uploads"
    empty = httpx.post(live.http + "/api/ingest", headers=live.auth, files=[("other", ("x.md", b"x", "text/plain"))])
    assert empty.status_code == 400 and "files" in empty.json()["message"]
    sneaky = httpx.post(live.http + "/api/ingest", headers=live.auth, files=[("files", (".hidden", b"x", "text/plain"))])
    assert sneaky.status_code == 400


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    from smallfirst.ingest.lock import WriterLock
    from smallfirst.errors import StoreLocked

    with WriterLock(tmp_path):
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
            WriterLock(tmp_path).acquire()
    with WriterLock(tmp_path):  # released: free again
        pass
