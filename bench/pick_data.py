"""The pick model's examples: every candidate span of every grounded question of the ``dev`` QA sets, with its features and whether it is right.

    python bench/pick_data.py [--store-cache DIR] [--out retrieval/data/pick_examples.jsonl]

For each dev set: ingest its corpus (kept in ``--store-cache`` between runs), then for each
grounded question do what the service does before it answers: embed, search, assemble the
sources, score the evidence, decide the question's shape, list the candidate spans, and have the
small model score each one as the continuation of the answer prompt. A candidate is right when
its cited answer holds one of the question's accepted answers, as ``smallfirst eval`` judges it.
The rows hold features, label, set name and a question number; no question text or id.
``python bench/train_answer_models.py`` fits the pick model on them. Prints its counts last.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from eval_bench import qa_corpora, store_cache_parser
from harness import ROOT, answer_model, ingested_store
from qa_sets import SETS, load

sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "retrieval" / "data" / "pick_examples.jsonl"


def prepared(name: str, corpus: Path, data_dir: Path) -> list[dict]:
    """Each grounded question's prompt and candidates, with their context for the features."""
    from smallfirst.retrieval.context import assemble_context
    from smallfirst.retrieval.answer_evidence import answer_evidence
    from smallfirst.retrieval.picking import candidates, cited
    from smallfirst.retrieval.shapes import ShapeModel
    from smallfirst.retrieval.support import check_answer
    from smallfirst.service.llm.prompts import evidence_passage_prompt

    settings, embedder, store, count = ingested_store(corpus, data_dir)
    shapes = ShapeModel.load()
    items = []
    try:
        for number, row in enumerate(r for r in load(SETS[name]) if r["kind"] == "grounded"):
            question = row["question"]
            vector = embedder.embed_query(question)
            hits = assemble_context(store.search(vector, settings.top_k), settings.context_tokens, count,
                                    settings.min_score).sources
            if not hits:
                continue
            evidence = answer_evidence(question, hits, embedder.token_vectors)
            shape, probability = shapes.shape(vector, question)
            spans = candidates(shape, question, evidence.ranked, "\n".join(h.text for h in evidence.hits))
            if not spans:
                continue
            sources = [h.text for h in evidence.hits]
            items.append({
                "set": name, "number": number, "row": row, "question": question, "shape": shape,
                "probability": probability, "evidence": evidence, "spans": spans,
                "prompt": evidence_passage_prompt(evidence, question, settings.evidence_windows),
                "hit_scores": [float(h.score) for h in hits],
                "rules": [check_answer(question, cited(c), evidence.ranked, sources).supported for c in spans],
            })
    finally:
        store.close()
    return items


async def scored(items: list[dict]) -> None:
    """The small model's score of each candidate, into ``item["scores"]``."""
    from smallfirst.service.scheduler import CpuScheduler
    from smallfirst.settings import Settings

    scheduler = CpuScheduler()
    scheduler.start()
    model = await answer_model(scheduler, Settings.load({}))
    try:
        for i, item in enumerate(items, 1):
            item["scores"] = await model.option_scores(item["prompt"].text, [c.text for c in item["spans"]],
                                                       passages=item["prompt"].passages)
            print(f"\r{i}/{len(items)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        scheduler.stop()


def rows(items: list[dict]) -> list[dict]:
    from smallfirst.retrieval.picking import candidate_features, cited
    from smallfirst.service.tools.eval import _matches

    out = []
    for item in items:
        features = candidate_features(item["spans"], item["scores"], item["question"], item["evidence"].ranked,
                                      item["hit_scores"], item["probability"], item["rules"])
        for candidate, f in zip(item["spans"], features):
            right = _matches(cited(candidate), item["row"]["answer_any"], item["row"].get("shape"))
            out.append({"set": item["set"], "question": item["number"], "shape": item["shape"], "right": right,
                        "features": {k: round(v, 6) for k, v in f.items()}})
    return out


def main() -> int:
    parser = store_cache_parser(__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sets", default=None, help="Comma-separated dev sets to redo (default: every dev set); "
                                                     "the others' rows in --out are kept.")
    args = parser.parse_args()
    dev = tuple(name for name, s in SETS.items() if s.split == "dev")
    names = tuple(args.sets.split(",")) if args.sets else dev
    if not set(names) <= set(dev):
        parser.error(f"only dev sets have pick examples: {', '.join(dev)}")
    kept = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()] if args.out.exists() else []
    examples = [e for e in kept if e["set"] not in names]
    with qa_corpora(args.store_cache, names) as sets:
        for name, corpus, data_dir in sets:
            items = prepared(name, corpus, data_dir)
            asyncio.run(scored(items))
            examples += rows(items)
            examples.sort(key=lambda e: dev.index(e["set"]))  # the same file whatever order the sets were redone in
            args.out.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in examples))
    questions = {(e["set"], e["question"]) for e in examples}
    answerable = {(e["set"], e["question"]) for e in examples if e["right"]}
    print(f"candidates={len(examples)} right={sum(e['right'] for e in examples)} questions={len(questions)} "
          f"with_a_right_candidate={len(answerable)} written={args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
