"""The distillation loop on real components: a teacher large tier answers forced-large asks about a
generated corpus, the service logs them, ``smallfirst distill`` trains an adapter on the log, and
the service restarted with it answers held-out questions in the teacher's form."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import websockets

from smallfirst.service.distill.evaluate import same_form
from smallfirst.service.distill.examples import collect
from smallfirst.service.llm.loading import bundled_model_path
from smallfirst.service.llm.slots import Row, SlotContext
from tests.conftest import BIN, Server, smallfirst
from tests.teacher_server import UNKNOWN, TeacherServer
from tests.test_escalation import ask
from tests.test_service import recv

# pytest-timeout counts a module fixture's setup in its first test: the loop below (ingest, a server
# asking the teacher, a training run of at most DISTILL_TIMEOUT_S, a server with the adapter) fits in
# the module's limit, so the training run's own limit fires first when it hangs.
DISTILL_TIMEOUT_S = 600
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

DEPOTS = 24
# The adapter teaches the small model to write its answers the teacher's way; picked answers would not show it.
WRITTEN = {"SMALLFIRST_ANSWER_PICK": "false"}
HELD_OUT = 12  # questions never sent to the teacher: the service's answers to them are compared


@dataclass(frozen=True)
class Fact:
    question: str
    value: str

    @property
    def teacher(self) -> str:
        """The teacher's fixed form: the value alone, cited. The small model's own habit, learned
        from the prompt's worked example, is a whole sentence."""
        return f"{self.value} [1]."


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(s) for s in (["K", "T", "V", "M", "R", "S", "D"], ["a", "e", "o", "u"],
                                             ["l", "r", "n", "st", "v"], ["ine", "ora", "ek", "ith", "ax", "und"]))


def make_corpus(folder: Path) -> list[Fact]:
    """A generated corpus of depots, two facts each, that no model has seen."""
    rng = random.Random(7)
    folder.mkdir(parents=True)
    names: list[str] = []
    while len(names) < DEPOTS:
        name = _name(rng)
        if name not in names:
            names.append(name)
    facts = []
    for name in names:
        code = f"{rng.choice('BCFGHJKLMNPQRWXZ')}{rng.choice('BCFGHJKLMNPQRWXZ')}-{rng.randint(1000, 9999)}"
        trucks = rng.randint(11, 95)
        quay = rng.choice(["north", "south", "east", "west"])
        (folder / f"{name.lower()}.md").write_text(
            f"# Depot {name}\n\nDepot {name} stands on the {quay} quay. The dispatch code of depot {name} is {code}. "
            f"Depot {name} keeps {trucks} trucks for the night shift.\n")
        facts += [Fact(f"What is the dispatch code of depot {name}?", code),
                  Fact(f"How many trucks does depot {name} keep?", str(trucks))]
    rng.shuffle(facts)
    return facts


def small_answer(server: Server, question: str) -> str:
    done = ask(server, question, tier="small")[-1]
    assert done["type"] == "done", done
    return str(done["small_answer"])


@dataclass
class Loop:
    """What one run of the whole loop produced."""

    facts: list[Fact]
    log: Path
    logged: list[dict[str, Any]]
    base_answers: list[str]
    out: Path
    distill: Any  # the CompletedProcess of `smallfirst distill`
    tuned: Server
    tuned_answers: list[str]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    root = tmp_path_factory.mktemp("distill")
    facts = make_corpus(root / "docs")
    trained, held = facts[HELD_OUT:], facts[:HELD_OUT]
    env = {"SMALLFIRST_DATA_DIR": str(root / "data")}
    result = smallfirst("ingest", str(root / "docs"), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    log = root / "teacher.jsonl"
    answers = {f.question: f.teacher for f in facts}
    with TeacherServer(lambda question, _: answers.get(question, UNKNOWN)) as teacher:
        base = Server(root / "data", {**WRITTEN, "SMALLFIRST_LARGE_URL": teacher.url, "SMALLFIRST_LARGE_MODEL": "teacher",
                                      "SMALLFIRST_DISTILL_LOG": str(log)}).start()
        try:
            for fact in trained:
                done = ask(base, fact.question, tier="large")[-1]
                assert done["tier"] == "large", done
            base_answers = [small_answer(base, f.question) for f in held]
        finally:
            base.stop()  # flushes the log, frees the embedded store and the cores
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    qa = root / "held.jsonl"
    qa.write_text("".join(json.dumps({"question": f.question, "kind": "grounded", "answer_any": [f.value]}) + "\n"
                          for f in held))
    out = root / "adapter"
    distill = smallfirst("distill", "--log", str(log), "--out", str(out), "--epochs", "2", "--learning-rate", "1e-3",
                         "--eval", str(qa), "--no-progress", env=env, timeout=DISTILL_TIMEOUT_S)
    tuned = Server(root / "data", {**WRITTEN, "SMALLFIRST_ADAPTER_PATH": str(out)})
    if distill.returncode == 0:
        tuned.start()
    try:
        tuned_answers = [small_answer(tuned, f.question) for f in held] if tuned.alive() else []
        (root / "answers.json").write_text(json.dumps(  # kept beside the run, for a look after a failure
            [{"question": f.question, "teacher": f.teacher, "base": b, "adapter": a}
             for f, b, a in zip(held, base_answers, tuned_answers)], indent=1))
        yield Loop(facts, log, logged, base_answers, out, distill, tuned, tuned_answers)
    finally:
        tuned.stop()


def test_the_service_logs_every_large_answer_with_what_rebuilds_the_small_prompt(loop: Loop) -> None:
    assert len(loop.logged) == len(loop.facts) - HELD_OUT
    by_question = {f.question: f for f in loop.facts}
    for entry in loop.logged:
        assert entry["v"] == 2 and entry["forced"] is True and entry["reason"] == "forced"
        assert entry["answer"] == by_question[entry["question"]].teacher
        assert entry["sources"] and all(isinstance(s["text"], str) and s["doc_id"] for s in entry["sources"])


def test_distill_trains_an_adapter_that_it_accepts(loop: Loop) -> None:
    assert loop.distill.returncode == 0, loop.distill.stderr[-3000:]
    report = json.loads((loop.out / "report.json").read_text())
    assert report["accepted"] is True
    assert (loop.out / "adapter.gguf").stat().st_size == report["adapter_bytes"] > 0
    assert not list(loop.out.glob("*.partial"))
    assert report["data"]["train"] + report["data"]["held_out"] == len(loop.logged)
    assert report["training"]["steps"] > 0 and report["training"]["last_loss"] < report["training"]["first_loss"]
    held, qa = report["evaluation"]["held_out"], report["evaluation"]["held"]
    assert held["adapter"]["same_form"] > held["base"]["same_form"]
    assert qa["adapter"]["accuracy"] >= qa["base"]["accuracy"] and qa["base"]["n"] == HELD_OUT
    summary = loop.distill.stdout.strip().splitlines()[-1]
    assert summary.startswith("distill: adapter accepted:") and "held accuracy" in summary


def test_the_restarted_service_answers_in_the_teachers_form(loop: Loop) -> None:
    assert loop.tuned.alive(), loop.distill.stderr[-3000:]
    held = loop.facts[:HELD_OUT]
    base = sum(same_form(a, f.teacher) for a, f in zip(loop.base_answers, held))
    tuned = sum(same_form(a, f.teacher) for a, f in zip(loop.tuned_answers, held))
    assert tuned >= base + HELD_OUT // 3 and tuned >= HELD_OUT // 2, (loop.base_answers, loop.tuned_answers)


def test_ready_readyz_and_stats_name_the_adapter(loop: Loop) -> None:
    assert loop.tuned.alive()

    async def first_frame() -> dict[str, Any]:
        async with websockets.connect(loop.tuned.ws, additional_headers=loop.tuned.auth) as ws:
            return await recv(ws)

    assert asyncio.run(first_frame())["adapter"] == "adapter"
    assert httpx.get(loop.tuned.http + "/readyz").json()["adapter"] == "adapter"
    stats = httpx.get(loop.tuned.http + "/api/stats", headers=loop.tuned.auth).json()
    assert stats["adapter"]["name"] == "adapter" and stats["adapter"]["train_examples"] > 0


def test_a_worse_adapter_is_refused_and_nothing_is_left_to_serve(loop: Loop, tmp_path: Path) -> None:
    out = tmp_path / "worse"
    # A learning rate a thousand times too high wrecks the model it tunes.
    result = smallfirst("distill", "--log", str(loop.log), "--out", str(out), "--epochs", "1", "--max-examples", "16",
                        "--holdout", "0.5", "--learning-rate", "1.0", "--no-progress", env={}, timeout=DISTILL_TIMEOUT_S)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "adapter REFUSED" in result.stdout and "no better than the base model" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["accepted"] is False and not (out / "adapter.gguf").exists() and not list(out.glob("*.partial"))
    assert report["training"]["weights"] == "cache"  # the float32 copy the first run kept, not the GGUF read anew
    (tmp_path / "data").mkdir()
    server = Server(tmp_path / "data", {"SMALLFIRST_ADAPTER_PATH": str(out)})
    with pytest.raises(RuntimeError, match="refused by its evaluation"):
        server.start(timeout=120)


def test_distill_refuses_bad_arguments_before_any_work(loop: Loop, tmp_path: Path) -> None:
    taken = smallfirst("distill", "--log", str(loop.log), "--out", str(loop.out), env={})
    assert taken.returncode == 2 and "already holds an adapter" in taken.stderr
    missing = smallfirst("distill", "--log", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), env={})
    assert missing.returncode == 2 and "is not a file" in missing.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n[1, 2]\n{\"question\": \"q\"}\n")
    empty = smallfirst("distill", "--log", str(junk), "--out", str(tmp_path / "o"), env={})
    assert empty.returncode == 1 and "too few usable examples" in empty.stderr
    assert not (tmp_path / "o" / "adapter.gguf").exists()


def test_autocomplete_contexts_apply_the_adapter_too_when_asked(loop: Loop) -> None:
    """``SMALLFIRST_COMPLETE_ADAPTER`` gives the autocomplete slots the adapter: the same prompt
    continues in the teacher's form with it, and in the base model's without."""
    examples, _ = collect([loop.log], None, windows=3)

    def continuation(lora: Path | None) -> str:
        ctx = SlotContext(bundled_model_path(), 1, 1024, 2, lora_path=lora)
        try:
            tokens = ctx.tokenize(examples[0].prompt, add_bos=True)
            for start in range(0, len(tokens) - 1, 64):
                ctx.decode([Row(0, tokens[start:min(start + 64, len(tokens) - 1)], False)])
            out = [ctx.decode([Row(0, tokens[-1:], True)])[0]]
            while len(out) < 12 and "\n" not in ctx.text(out):
                out.append(ctx.decode([Row(0, [out[-1]], True)])[0])
            return ctx.text(out).split("\n")[0].strip()
        finally:
            ctx.close()

    assert same_form(continuation(loop.out / "adapter.gguf"), examples[0].target)
    assert not same_form(continuation(None), examples[0].target)


def test_an_interrupted_run_leaves_no_adapter(loop: Loop, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([str(BIN / "smallfirst"), "distill", "--log", str(loop.log), "--out", str(out), "--epochs", "1",
                             "--no-progress"], stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:  # wait until training has started
        seen.append(line)
        if line.startswith("training: step") or time.monotonic() > deadline:
            break
    assert seen and seen[-1].startswith("training: step"), "".join(seen[-20:])
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(60) == 130, rest[-2000:]
    assert "no adapter was written" in rest
    assert not list(out.glob("*"))  # no adapter, no partial file, not even a report
