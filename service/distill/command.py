"""``smallfirst distill``: logged large-tier answers -> a LoRA adapter for the small model, kept
only when it beats the base model (see :func:`smallfirst.service.distill.evaluate.verdict`).

Steps: read the logs and rebuild each example's small-tier prompt; hold out a share; measure
the base model; train on the CPU; write the adapter GGUF beside a partial name; measure base +
adapter; then either rename it into place (accepted) or delete it (refused). ``DIR/report.json``
says what happened either way. An interrupted run leaves no adapter behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson

from smallfirst.errors import SmallfirstError
from smallfirst.settings import Settings, SettingsError, add_arguments, from_args
from smallfirst.service.distill.adapter import ADAPTER_FILE, REPORT_FILE, REPORT_VERSION, base_model_identity
from smallfirst.service.distill.evaluate import QAItem, Scores

TRAINING_PACKAGES = ("torch", "transformers", "peft", "gguf")
SETTINGS_USED = (
    "data_dir", "qdrant_url", "qdrant_api_key", "collection", "embed_model", "embed_backend", "embed_cache_dir",
    "model_path", "model_threads", "answer_ctx", "answer_max_tokens", "evidence_windows", "top_k", "min_score",
    "context_tokens",
)


class DistillError(Exception):
    """The run cannot go on; the message says why (exit status 1)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", dest="logs", action="append", type=Path, required=True, metavar="FILE",
                        help="A distillation log (SMALLFIRST_DISTILL_LOG) to learn from; repeat for several.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="A new folder for adapter.gguf and report.json (SMALLFIRST_ADAPTER_PATH serves it).")
    parser.add_argument("--epochs", type=int, default=3, help="Passes over the training examples (default 3).")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N", help="Use at most N examples.")
    parser.add_argument("--eval", dest="evals", action="append", type=Path, default=[], metavar="QA.jsonl",
                        help="A QA file (see `smallfirst eval`) whose grounded questions base and adapter must answer "
                        "(repeat for several); its documents must be in the store, in --collection or in the collection "
                        "a line names (\"collection\"); stop a service that holds the embedded store.")
    parser.add_argument("--holdout", type=float, default=0.2, help="Share of questions held out for evaluation (default 0.2).")
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="AdamW learning rate (default 5e-4).")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8).")
    parser.add_argument("--batch-size", type=int, default=4, help="Examples per training step (default 4).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the shuffle and the initial weights (default 0).")
    parser.add_argument("--no-progress", action="store_true", help="Do not draw the progress bar.")
    add_arguments(parser, SETTINGS_USED)


def _check_args(args: argparse.Namespace) -> None:
    if args.epochs <= 0 or args.batch_size <= 0 or args.rank <= 0 or args.learning_rate <= 0:
        raise SettingsError("--epochs, --batch-size, --rank and --learning-rate must be positive")
    if args.max_examples is not None and args.max_examples <= 0:
        raise SettingsError("--max-examples must be positive")
    if not 0 < args.holdout < 1:
        raise SettingsError("--holdout must be between 0 and 1")
    for path in [*args.logs, *args.evals]:
        if not path.is_file():
            raise SettingsError(f"{path} is not a file")
    if (args.out / ADAPTER_FILE).exists():
        raise SettingsError(f"{args.out} already holds an adapter; give a new folder (a served adapter is never replaced)")


def _check_packages() -> None:
    import importlib.util

    missing = [name for name in TRAINING_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise DistillError(f"the training packages {', '.join(missing)} are missing: pip install 'smallfirst[distill]'")


def _write_json(path: Path, value: Any) -> None:
    """Write ``value`` beside ``path`` and rename it into place, so a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    os.replace(partial, path)


def _support_check(question: str, evidence: Any, sources: list[str]) -> Callable[[str], bool]:
    """Whether an answer to ``question`` passes the support check against its sources."""
    from smallfirst.retrieval.support import check_answer

    return lambda answer: check_answer(question, answer, evidence.ranked, sources).supported


def _qa_items(paths: Sequence[Path], settings: Settings, embedder: Any, count_tokens: Any) -> dict[str, list[QAItem]]:
    """Each QA file's grounded questions with the prompt the service would build for them."""
    from smallfirst.retrieval.context import assemble_context
    from smallfirst.retrieval.answer_evidence import answer_evidence
    from smallfirst.retrieval.store import VectorStore
    from smallfirst.service.tools.eval import load_questions
    from smallfirst.service.llm.prompts import evidence_prompt

    if not paths:
        return {}
    store = VectorStore.open(settings.collection, embedder.dimension, path=settings.qdrant_path,
                             url=settings.qdrant_url, api_key=settings.qdrant_api_key)

    def collection(name: str | None) -> Any:
        if name is None or name == store.collection:
            return store
        other = store.with_collection(str(name))
        if not other.exists():
            raise DistillError(f"the QA file names the collection {name!r}, which the store does not hold")
        return other

    try:
        out: dict[str, list[QAItem]] = {}
        for path in paths:
            try:
                rows = [r for r in load_questions(path) if r["kind"] == "grounded"]
            except ValueError as exc:
                raise DistillError(str(exc)) from None
            items = []
            for row in rows:
                question = row["question"]
                hits = collection(row.get("collection")).search(embedder.embed_query(question), settings.top_k)
                context = assemble_context(hits, settings.context_tokens, count_tokens, settings.min_score)
                evidence = answer_evidence(question, context.sources, embedder.token_vectors)
                texts = [h.text for h in context.sources]
                items.append(QAItem(
                    question, tuple(row["answer_any"]), evidence_prompt(evidence, question, settings.evidence_windows),
                    _support_check(question, evidence, texts),
                ))
            if not items:
                raise DistillError(f"{path} has no grounded questions")
            name = path.stem
            while name in out or name == "held_out":  # two files of one name are reported apart
                name += "+"
            out[name] = items
        return out
    finally:
        store.close()


def _measure(model_path: Path, adapter: Path | None, settings: Settings, threads: int, held: Sequence[Any],
             qa: dict[str, list[QAItem]]) -> tuple[dict[str, Scores], list[str]]:
    from smallfirst.service.distill.evaluate import Generator, score_pairs, score_qa

    generate = Generator(model_path, adapter, settings.answer_ctx, settings.answer_max_tokens, threads)
    try:
        scores: dict[str, Scores] = {}
        scores["held_out"], answers = score_pairs(generate, held)
        for name, items in qa.items():
            scores[name], _ = score_qa(generate, items)
        return scores, answers
    finally:
        generate.close()


def _progress(enabled: bool) -> tuple[Any, Any]:
    """A progress bar with an ETA (tqdm), or plain lines every tenth of the run."""
    from tqdm import tqdm

    state: dict[str, Any] = {"bar": None}

    def update(step: int, steps: int, loss: float) -> None:
        if enabled:
            if state["bar"] is None:
                state["bar"] = tqdm(total=steps, desc="training", unit="step", file=sys.stderr)
            state["bar"].update(1)
            state["bar"].set_postfix(loss=f"{loss:.3f}")
        elif step == steps or step % max(1, steps // 10) == 0:
            print(f"training: step {step}/{steps}, loss {loss:.3f}", file=sys.stderr)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    return update, close


def distill(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The whole run; returns the report (also written to ``DIR/report.json``)."""
    from smallfirst.retrieval.embedder import Embedder
    from smallfirst.service.distill.adapter_gguf import write_adapter
    from smallfirst.service.distill.evaluate import verdict
    from smallfirst.service.distill.examples import collect, split
    from smallfirst.service.distill.train import TrainConfig, rows_for, train_lora
    from smallfirst.service.llm.loading import bundled_model_path, load_llama

    _check_packages()
    started = time.perf_counter()
    threads = settings.model_threads or os.cpu_count() or 1
    model_path = Path(settings.model_path) if settings.model_path else bundled_model_path()
    embedder = Embedder(settings.embed_model, 256, threads, settings.embed_backend, settings.embed_cache_dir)
    examples, tally = collect(args.logs, embedder.token_vectors, settings.evidence_windows, args.max_examples)
    train, held = split(examples, args.holdout)
    print(f"distill: {tally.lines} logged answers, {len(examples)} usable ({len(train)} to train, {len(held)} held out); "
          f"dropped {dict(tally.dropped) or 'none'}", file=sys.stderr)
    if not train or not held:
        raise DistillError(f"too few usable examples to train and hold some out ({len(examples)}); log more large-tier answers")
    vocab = load_llama(model_path, n_ctx=64, threads=1, vocab_only=True)
    qa = _qa_items(args.evals, settings, embedder, lambda text: len(vocab.tokenize(text.encode("utf-8"), add_bos=False)))
    print("distill: measuring the base model", file=sys.stderr)
    base, base_answers = _measure(model_path, None, settings, threads, held, qa)

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         rank=args.rank, alpha=2.0 * args.rank, seed=args.seed, threads=threads)
    rows = rows_for(train, vocab, settings.answer_ctx)
    if not rows:
        raise DistillError(f"every training example is longer than SMALLFIRST_ANSWER_CTX ({settings.answer_ctx} tokens)")
    print(f"distill: training on {len(rows)} examples ({config.epochs} epochs); the model loads for "
          "training first (a minute the first time, while its float32 copy is kept; seconds after)",
          file=sys.stderr)
    update, close_bar = _progress(not args.no_progress)
    try:
        result = train_lora(model_path, rows, config, progress=update)
    finally:
        close_bar()
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / (ADAPTER_FILE + ".partial")
    try:
        size = write_adapter(result.lora, config.alpha, model_path, partial)
        print("distill: measuring base + adapter", file=sys.stderr)
        tuned, tuned_answers = _measure(model_path, partial, settings, threads, held, qa)
        accepted, why = verdict(base, tuned)
        report = {
            "version": REPORT_VERSION, "accepted": accepted, "verdict": why,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_model": base_model_identity(model_path),
            "data": {**tally.as_dict(), "train": len(train), "held_out": len(held), "logs": [str(p) for p in args.logs]},
            "training": {**dataclasses.asdict(config), **result.figures()},
            "evaluation": {name: {"base": base[name].as_dict(), "adapter": tuned[name].as_dict()} for name in base},
            "samples": [{"question": e.question, "teacher": e.target, "base": b, "adapter": a}
                        for e, b, a in list(zip(held, base_answers, tuned_answers))[:10]],
            "adapter_bytes": size if accepted else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if accepted:
            os.replace(partial, args.out / ADAPTER_FILE)
        _write_json(args.out / REPORT_FILE, report)
        return report
    finally:
        partial.unlink(missing_ok=True)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary(report: dict[str, Any]) -> str:
    """The one line a run ends with."""
    held = report["evaluation"]["held_out"]
    parts = [f"held-out F1 {held['base']['f1']:.2f} -> {held['adapter']['f1']:.2f}",
             f"same form {held['base']['same_form']:.2f} -> {held['adapter']['same_form']:.2f}"]
    for name, scores in report["evaluation"].items():
        if name != "held_out":
            b, a = scores["base"], scores["adapter"]
            parts.append(f"{name} accuracy {b['accuracy']:.2f} -> {a['accuracy']:.2f}, "
                         f"check precision {_share(b.get('check_precision'))} -> {_share(a.get('check_precision'))}")
    training = report["training"]
    head = "adapter accepted" if report["accepted"] else "adapter REFUSED"
    size = f", {report['adapter_bytes'] / 1e6:.1f} MB" if report["adapter_bytes"] else ""
    return (f"distill: {head}: {'; '.join(parts)}; {report['data']['train']} examples, {training['steps']} steps "
            f"at {training['seconds_per_step']:.2f} s, {report['seconds']:.0f} s in all{size}")


def run(args: argparse.Namespace) -> int:
    try:
        settings = from_args(args)
        _check_args(args)
    except SettingsError as exc:
        print(f"smallfirst distill: {exc}", file=sys.stderr)
        return 2
    try:
        report = distill(args, settings)
    except KeyboardInterrupt:
        print("smallfirst distill: interrupted; no adapter was written", file=sys.stderr)
        return 130
    except DistillError as exc:
        print(f"smallfirst distill: {exc}", file=sys.stderr)
        return 1
    except SmallfirstError as exc:
        print(f"smallfirst distill: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"smallfirst distill: {exc}", file=sys.stderr)
        return 1
    print(summary(report))
    if not report["accepted"]:
        print(f"smallfirst distill: the adapter is not kept: {report['verdict']}", file=sys.stderr)
        return 1
    return 0
