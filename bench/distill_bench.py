"""The distillation loop on a corpus this project did not write: teacher answers logged by the
service, `smallfirst distill`, then base against adapter on questions held out of training.

    python bench/distill_bench.py [--set pydoc|docs] [--holdout 0.3] [--epochs 3] [--out DIR]

The QA set's grounded questions are split by a hash of the question. A teacher large tier
answers the training share in a fixed extractive form (the first accepted answer string,
cited: ``sys.path [1].``); it stands in for a large model that answers right. The service logs
those answers (`SMALLFIRST_DISTILL_LOG`, asks forced to the large tier), then `smallfirst
distill` trains on the log and evaluates on the held-out questions (`--eval`), which neither
the teacher nor the training saw. The adapter folder is kept in ``--out`` for `eval_bench.py`
(`SMALLFIRST_ADAPTER_PATH=DIR python bench/eval_bench.py`). Prints the figures last, in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import websockets
from eval_bench import SETS, pydoc_corpus
from harness import BIN, ROOT, bench_env, ingest, service

sys.path.insert(0, str(ROOT))
from tests.teacher_server import TeacherServer  # noqa: E402


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
    parser.add_argument("--set", default="pydoc", choices=sorted(SETS))
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Keep the adapter folder here (a new folder).")
    args = parser.parse_args()
    rows = [json.loads(line) for line in SETS[args.set].read_text().splitlines() if line.strip()]
    grounded = [r for r in rows if r["kind"] == "grounded" and r["answer_any"]]
    train = [r for r in grounded if not held_out(r["question"], args.holdout)]
    held = [r for r in grounded if held_out(r["question"], args.holdout)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = ROOT / "docs" if args.set == "docs" else pydoc_corpus(work / "pydoc")
        log, qa = work / "teacher.jsonl", work / "held.jsonl"
        env = bench_env(work / "store", SMALLFIRST_ANSWER_TEMPERATURE="0")
        ingest(corpus, env)
        answers = {r["question"]: f"{r['answer_any'][0]} [1]." for r in train}
        with TeacherServer(answers) as teacher:
            with service({**env, "SMALLFIRST_LARGE_URL": teacher.url, "SMALLFIRST_LARGE_MODEL": "teacher",
                          "SMALLFIRST_DISTILL_LOG": str(log)}, timeout_s=300) as port:
                logged = asyncio.run(ask_large(port, [r["question"] for r in train]))
        qa.write_text("".join(json.dumps(r) + "\n" for r in held))
        out = args.out or work / "adapter"
        result = subprocess.run(
            [str(BIN / "smallfirst"), "distill", "--log", str(log), "--out", str(out), "--eval", str(qa),
             "--epochs", str(args.epochs), "--holdout", "0.15", "--no-progress"],
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
        print(f"  {sample['question'][:60]!r}: teacher {sample['teacher']!r} | base {sample['base'][:50]!r} | "
              f"adapter {sample['adapter'][:50]!r}")
    t, e = report["training"], report["evaluation"]
    qa_scores, pairs = e["held"], e["held_out"]
    print(f"{args.set}: teacher_answers={logged} train={report['data']['train']} dropped={report['data']['dropped']} "
          f"held_questions={qa_scores['base']['n']} accuracy base={qa_scores['base']['accuracy']} "
          f"adapter={qa_scores['adapter']['accuracy']} supported base={qa_scores['base']['supported']} "
          f"adapter={qa_scores['adapter']['supported']} pair_f1 base={pairs['base']['f1']} adapter={pairs['adapter']['f1']} "
          f"steps={t['steps']} s_per_step={t['seconds_per_step']} train_s={t['seconds']} load_s={t['load_seconds']} "
          f"total_s={report['seconds']} adapter_bytes={report['adapter_bytes']} accepted={report['accepted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
