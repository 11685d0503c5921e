"""The distillation loop on a corpus this project did not write: teacher answers logged by the
service, `smallfirst distill`, then base against adapter on questions held out of training.

    python bench/distill_bench.py [--holdout 0.3] [--epochs 3] [--out DIR]

The grounded questions of bench/qa/pydoc.jsonl are split by a hash of the question. A teacher
large tier answers the training share extractively: the sentence of its sources that holds the
first accepted answer string, cited (it stands in for a large model that answers right, in
sentences). The service logs those answers (`SMALLFIRST_DISTILL_LOG`, asks forced to the large
tier); `smallfirst distill` trains on the log and evaluates on the held-out pydoc questions,
which neither the teacher nor the training saw, and on bench/qa/docs.jsonl over docs/ in a
collection of its own: an adapter must not cost another corpus accuracy or check precision.
The adapter folder is kept in ``--out`` for `SMALLFIRST_ADAPTER_PATH=DIR python bench/eval_bench.py`.
Prints the figures last, in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import websockets
from eval_bench import SETS, pydoc_corpus
from harness import BIN, ROOT, bench_env, ingest, service

sys.path.insert(0, str(ROOT))
from tests.teacher_server import UNKNOWN, TeacherServer  # noqa: E402

_SOURCE_HEAD = re.compile(r"^\[(\d+)\] .*$", re.M)
LONGEST_SENTENCE = 300


def extractive_teacher(accepted: dict[str, list[str]]):
    """A teacher that answers with the source sentence that holds an accepted string and shares
    the most terms with the question (headings left out), cited."""
    from smallfirst.retrieval.evidence import content_words, split_sentences

    def answer(question: str, message: str) -> str:
        strings = [a.lower() for a in accepted.get(question, [])]
        if not strings or "<<<" not in message:
            return UNKNOWN
        asked = set(content_words(question))
        body = message.split("<<<", 1)[1].split(">>>", 1)[0]
        parts = _SOURCE_HEAD.split(body)  # text before the first source, then (number, text) pairs
        best: tuple[int, str, str] | None = None
        for number, text in zip(parts[1::2], parts[2::2]):
            for sentence in split_sentences(text.strip()):
                said = " ".join(sentence.text.split())
                if (sentence.text.strip() == sentence.label or len(said) > LONGEST_SENTENCE
                        or not any(a in said.lower() for a in strings)):
                    continue
                overlap = len(asked & set(content_words(f"{sentence.label} {said}")))
                if best is None or overlap > best[0]:
                    best = (overlap, said, number)
        if best is None:
            return UNKNOWN
        return f"{best[1].rstrip('.')} [{best[2]}]."

    return answer


def held_out(question: str, share: float) -> bool:
    digest = hashlib.sha256(" ".join(question.lower().split()).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


async def ask_large(port: int, questions: list[str]) -> int:
    """Ask each question forced to the large tier; how many were answered there."""
    answered = 0
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.recv()  # ready
        for i, question in enumerate(questions):
            await ws.send(json.dumps({"type": "ask", "id": f"t{i}", "question": question, "tier": "large"}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("id") == f"t{i}" and frame["type"] in ("done", "error"):
                    answered += frame["type"] == "done" and frame.get("tier") == "large"
                    break
    return answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Keep the adapter folder here (a new folder).")
    args = parser.parse_args()
    rows = [json.loads(line) for line in SETS["pydoc"].read_text().splitlines() if line.strip()]
    grounded = [r for r in rows if r["kind"] == "grounded" and r["answer_any"]]
    train = [r for r in grounded if not held_out(r["question"], args.holdout)]
    held = [r for r in grounded if held_out(r["question"], args.holdout)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log, held_qa, docs_qa = work / "teacher.jsonl", work / "pydoc-held.jsonl", work / "docs.jsonl"
        env = bench_env(work / "store", SMALLFIRST_ANSWER_TEMPERATURE="0", SMALLFIRST_COLLECTION="pydoc")
        ingest(pydoc_corpus(work / "pydoc"), env)
        ingest(ROOT / "docs", {**env, "SMALLFIRST_COLLECTION": "docs"})
        teacher_answers = extractive_teacher({r["question"]: r["answer_any"] for r in train})
        with TeacherServer(teacher_answers) as teacher:
            with service({**env, "SMALLFIRST_LARGE_URL": teacher.url, "SMALLFIRST_LARGE_MODEL": "teacher",
                          "SMALLFIRST_DISTILL_LOG": str(log)}, timeout_s=300) as port:
                logged = asyncio.run(ask_large(port, [r["question"] for r in train]))
        held_qa.write_text("".join(json.dumps(r) + "\n" for r in held))
        docs_qa.write_text("".join(json.dumps({**json.loads(line), "collection": "docs"}) + "\n"
                                   for line in SETS["docs"].read_text().splitlines() if line.strip()))
        out = args.out or work / "adapter"
        result = subprocess.run(
            [str(BIN / "smallfirst"), "distill", "--log", str(log), "--out", str(out), "--eval", str(held_qa),
             "--eval", str(docs_qa), "--epochs", str(args.epochs), "--holdout", "0.2", "--no-progress"],
            env=env, capture_output=True, text=True,
        )
        sys.stderr.write("\n".join(line for line in result.stderr.splitlines() if line.startswith(("distill", "training"))))
        report_path = out / "report.json"
        if not report_path.exists():
            sys.stderr.write(result.stderr[-3000:])
            raise SystemExit(f"distill failed with {result.returncode}")
        report = json.loads(report_path.read_text())
    print(json.dumps(report["evaluation"], indent=1))
    for sample in report["samples"]:
        print(f"  {sample['question'][:60]!r}: teacher {sample['teacher'][:60]!r} | base {sample['base'][:60]!r} | "
              f"adapter {sample['adapter'][:60]!r}")
    print(result.stdout.strip())
    t, e = report["training"], report["evaluation"]

    def figures(name: str) -> str:
        b, a = e[name]["base"], e[name]["adapter"]
        return (f"{name}: n={b['n']} accuracy {b['accuracy']}->{a['accuracy']} supported {b['supported']}->{a['supported']} "
                f"check_precision {b.get('check_precision')}->{a.get('check_precision')}")

    print(f"teacher_answers={logged} train={report['data']['train']} dropped={report['data']['dropped']} | "
          f"{figures('pydoc-held')} | {figures('docs')} | pair_f1 {e['held_out']['base']['f1']}->{e['held_out']['adapter']['f1']} | "
          f"steps={t['steps']} s_per_step={t['seconds_per_step']} train_s={t['seconds']} load_s={t['load_seconds']} "
          f"total_s={report['seconds']} adapter_bytes={report['adapter_bytes']} accepted={report['accepted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
