"""Distillation's data path without training: log lines -> examples, filtering, the held-out split,
token rows, adapter tensor names, the keep-or-refuse verdict and the service's adapter checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smallfirst.errors import ConfigError
from smallfirst.retrieval.evidence import find_evidence
from smallfirst.retrieval.store import Hit
from smallfirst.service.distill.adapter import base_model_identity, load_adapter
from smallfirst.service.distill.adapter_gguf import gguf_tensors
from smallfirst.service.distill.evaluate import Scores, claims_kept, same_form, token_f1, verdict
from smallfirst.service.distill.examples import clean_target, collect, split
from smallfirst.service.distill.log import hit_record
from smallfirst.service.llm.prompts import evidence_prompt

HIT = Hit(id="1", score=0.71, doc_id="docs-1/ferry.md", doc_version="v1", chunk_index=0, title="Ferry › Timetable",
          uri="ferry.md", text="The harbour ferry leaves at 07:30 on weekdays. On Sundays the first ferry leaves at 08:15. "
          "A return ticket costs 12 euros.")
QUESTION = "When does the first ferry leave on Sundays?"


def entry(question: str = QUESTION, answer: str = "At 08:15 on Sundays [1].", **extra: object) -> dict[str, object]:
    return {"v": 2, "question": question, "answer": answer, "sources": [hit_record(HIT)], **extra}


def write_log(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_an_example_is_the_small_tiers_prompt_and_the_teachers_answer(tmp_path: Path) -> None:
    examples, tally = collect([write_log(tmp_path / "log.jsonl", entry())], None, windows=3)
    assert tally.kept == 1 and not tally.dropped
    example = examples[0]
    assert example.prompt == evidence_prompt(find_evidence(QUESTION, [HIT], None), QUESTION, 3)
    assert example.prompt.endswith(f"Question: {QUESTION}\nAnswer:") and "first ferry leaves at 08:15" in example.prompt
    assert example.target == "At 08:15 on Sundays [1]."


def test_duplicates_refusals_unsupported_and_malformed_lines_are_dropped_and_counted(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.jsonl",
        entry(),
        entry(),  # the same question and answer again
        entry(question="Is there a ferry at night?", answer="The documents do not say."),
        entry(question="When does the last ferry leave?", answer="At 23:45 [1]."),  # a time the sources do not hold
        entry(question="What does a ticket cost?", answer="   "),
        entry(question="What does a return ticket cost?", answer="A return ticket costs 12 euros [1].", sources=[]),
        "not json", "[1, 2]", json.dumps({"question": "no answer"}),
    )
    examples, tally = collect([log], None, windows=3)
    assert len(examples) == 1
    assert tally.lines == 9 and tally.dropped == {"duplicate": 1, "refused": 1, "unsupported": 1, "empty": 1,
                                                   "no_sources": 1, "not_json": 2, "malformed": 1}


def test_the_teachers_blank_lines_and_fences_do_not_reach_the_target() -> None:
    assert clean_target("First part.\n\n\nSecond <<<part>>>.\n") == "First part.\nSecond part."


def test_the_split_is_by_question_and_the_same_on_every_run(tmp_path: Path) -> None:
    lines = [entry(question=f"When does ferry {i} leave on Sundays?") for i in range(40)]
    lines += [entry(question="When does ferry 3 leave on Sundays?", answer="On Sundays at 08:15 [1].")]
    examples, _ = collect([write_log(tmp_path / "log.jsonl", *lines)], None, windows=3)
    train, held = split(examples, 0.25)
    assert 0 < len(held) < len(examples) and len(train) + len(held) == len(examples) == 41
    assert not {e.question for e in train} & {e.question for e in held}
    assert [e.question for e in split(examples, 0.25)[1]] == [e.question for e in held]


@pytest.mark.slow
def test_rows_are_the_served_tokens_then_the_answer_and_its_stop(tmp_path: Path) -> None:
    from smallfirst.service.distill.train import rows_for
    from smallfirst.service.llm.loading import bundled_model_path, load_llama

    vocab = load_llama(bundled_model_path(), n_ctx=64, threads=1, vocab_only=True)
    examples, _ = collect([write_log(tmp_path / "log.jsonl", entry())], None, windows=3)
    (row,) = rows_for(examples, vocab, max_tokens=2048)
    assert row.prompt == list(vocab.tokenize(examples[0].prompt.encode(), add_bos=True, special=False))
    assert vocab.detokenize(row.target).decode() == " At 08:15 on Sundays [1].\n\n"
    assert rows_for(examples, vocab, max_tokens=len(row.prompt)) == []  # too long for the context: left out


def test_adapter_tensors_carry_llama_cpp_names() -> None:
    a, b = np.zeros((8, 640), np.float32), np.zeros((1024, 8), np.float32)
    names = gguf_tensors({
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight": a,
        "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight": b,
        "base_model.model.model.layers.17.self_attn.o_proj.lora_A.default.weight": a,
    })
    assert set(names) == {"blk.3.attn_q.weight.lora_a", "blk.3.attn_q.weight.lora_b", "blk.17.attn_output.weight.lora_a"}
    with pytest.raises(ValueError, match="no llama.cpp tensor"):
        gguf_tensors({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": a})


def test_answer_scores() -> None:
    assert same_form("KX-4471 [1].", "KX-4471 [1]") and not same_form("The code is KX-4471 [1].", "KX-4471 [1].")
    assert token_f1("The code is KX-4471 [1].", "KX-4471 [1].") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("nothing alike", "KX-4471") == 0.0
    assert claims_kept("It keeps 37 trucks.", "37 [1].") and not claims_kept("It keeps 38 trucks.", "37 [1].")


def test_the_adapter_is_kept_only_if_closer_to_the_teacher_and_no_qa_accuracy_or_check_precision_is_lost() -> None:
    base = {"held_out": Scores(n=10, f1=0.4), "docs": Scores(n=12, accuracy=0.5)}
    assert verdict(base, {"held_out": Scores(n=10, f1=0.6), "docs": Scores(n=12, accuracy=0.5)})[0]
    kept, why = verdict(base, {"held_out": Scores(n=10, f1=0.6), "docs": Scores(n=12, accuracy=0.42)})
    assert not kept and "docs accuracy" in why
    assert not verdict(base, {"held_out": Scores(n=10, f1=0.3), "docs": Scores(n=12, accuracy=0.6)})[0]
    assert not verdict(base, {"held_out": Scores(n=10, f1=0.4), "docs": Scores(n=12, accuracy=0.6)})[0]  # no gain
    # Right as often, but its wrong answers now pass the support check: refused.
    base["docs"].check_precision = 1.0
    kept, why = verdict(base, {"held_out": Scores(n=10, f1=0.6), "docs": Scores(n=12, accuracy=0.5, check_precision=0.4)})
    assert not kept and "docs check precision 0.400 < base 1.000" in why


def test_the_service_serves_only_an_accepted_adapter_for_its_own_model(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"0" * 100)
    folder = tmp_path / "adapter"
    with pytest.raises(ConfigError, match="not a folder"):
        load_adapter(folder, model)
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load_adapter(folder, model)
    report = {"version": 1, "accepted": False, "verdict": "worse than the base model", "base_model": base_model_identity(model)}
    (folder / "report.json").write_text(json.dumps(report))
    with pytest.raises(ConfigError, match="refused by its evaluation"):
        load_adapter(folder, model)
    (folder / "report.json").write_text(json.dumps({**report, "accepted": True}))
    with pytest.raises(ConfigError, match="holds no adapter.gguf"):
        load_adapter(folder, model)
    (folder / "adapter.gguf").write_bytes(b"gguf")
    assert load_adapter(folder, model).describe()["bytes"] == 4
    other = tmp_path / "other.gguf"
    other.write_bytes(b"0" * 99)
    with pytest.raises(ConfigError, match="trained for"):
        load_adapter(folder, other)


def test_qa_scores_count_accuracy_and_the_checks_precision() -> None:
    from smallfirst.service.distill.evaluate import QAItem, score_qa

    items = [QAItem("q1", ("220",), "p1", lambda a: True), QAItem("q2", ("8",), "p2", lambda a: True),
             QAItem("q3", ("sys.path",), "p3", lambda a: False)]
    answers = {"p1": "A chunk is 220 tokens [1].", "p2": "There are 10 slots.", "p3": "It is sys.path [2]."}
    scores, said = score_qa(answers.__getitem__, items)
    assert said == [answers["p1"], answers["p2"], answers["p3"]]
    assert scores.accuracy == pytest.approx(2 / 3) and scores.supported == pytest.approx(2 / 3)
    assert scores.check_precision == pytest.approx(0.5)


def test_max_examples_caps_what_is_built_and_counts_the_rest(tmp_path: Path) -> None:
    lines = [entry(question=f"When does ferry {i} leave on Sundays?") for i in range(3)]
    examples, tally = collect([write_log(tmp_path / "log.jsonl", *lines)], None, windows=3, max_examples=1)
    assert len(examples) == 1 and tally.dropped == {"over_max_examples": 2}
