"""LoRA training of the small model on the CPU, with transformers and peft (the ``distill`` extra).

transformers reads the served GGUF itself (dequantised to float32, kept once per machine by
:mod:`smallfirst.service.distill.base_weights`), so the adapter is trained on the very weights
llama.cpp serves. Token ids come from llama.cpp's tokenizer of the same file,
so training sees exactly the tokens the service evaluates.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
IGNORE = -100  # label of a token the loss skips (prompt and padding)


@dataclass(frozen=True)
class TrainingRow:
    """One example as token ids: the prompt (not learned) then the target (learned)."""

    prompt: list[int]
    target: list[int]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 4
    learning_rate: float = 5e-4
    rank: int = 8
    alpha: float = 16.0
    seed: int = 0
    threads: int = 0


@dataclass(frozen=True)
class TrainResult:
    lora: dict[str, np.ndarray]  # peft state-dict entries of the adapter
    steps: int
    seconds: float
    load_seconds: float
    weights: str  # "cache" (the float32 copy an earlier run made) or "gguf" (read from the model file)
    first_loss: float
    last_loss: float

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    def figures(self) -> dict[str, float | int | str]:
        """What a report says of the run (everything but the weights)."""
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "seconds_per_step": round(self.seconds_per_step, 3),
                "load_seconds": round(self.load_seconds, 1), "weights": self.weights, "first_loss": round(self.first_loss, 4),
                "last_loss": round(self.last_loss, 4)}


ANSWER_END = "\n\n"  # the service's first answer stop: learning it teaches the adapter to end its answer


def rows_for(examples: Sequence[Any], vocab: Any, max_tokens: int) -> list[TrainingRow]:
    """Examples as llama.cpp token ids (``vocab``: the served model's ``Llama``): the prompt as
    the service evaluates it (with BOS), then the answer the small tier should generate after
    ``Answer:``, ending with the stop. Examples longer than ``max_tokens`` are left out."""
    rows = []
    for example in examples:
        prompt = list(vocab.tokenize(example.prompt.encode("utf-8"), add_bos=True, special=False))
        target = list(vocab.tokenize((" " + example.target + ANSWER_END).encode("utf-8"), add_bos=False, special=False))
        if len(prompt) + len(target) <= max_tokens:
            rows.append(TrainingRow(prompt, target))
    return rows


def _batches(rows: Sequence[TrainingRow], config: TrainConfig) -> list[list[TrainingRow]]:
    """Every epoch shuffled (seeded), cut into batches."""
    rng = random.Random(config.seed)
    batches: list[list[TrainingRow]] = []
    for _ in range(config.epochs):
        order = list(rows)
        rng.shuffle(order)
        batches.extend(order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size))
    return batches


def _tensors(batch: Sequence[TrainingRow], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and labels (the target tokens only)."""
    import torch

    width = max(len(r.prompt) + len(r.target) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, row in enumerate(batch):
        tokens = row.prompt + row.target
        ids[i, :len(tokens)] = torch.tensor(tokens)
        mask[i, :len(tokens)] = 1
        labels[i, len(row.prompt):len(tokens)] = torch.tensor(row.target)
    return ids, mask, labels


def _answer_loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """Cross-entropy of the answer tokens alone. The output projection (262k wide for Gemma 3)
    is applied only at the positions that predict an answer token, not at every prompt position:
    that projection is most of a step's cost when computed for the whole sequence."""
    import torch
    import torch.nn.functional as F

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][keep])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), targets[keep])


def train_lora(
    model_path: Path, rows: Sequence[TrainingRow], config: TrainConfig, pad_id: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train a LoRA on the attention projections; ``progress(step, steps, loss)`` after each step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.utils import logging as hf_logging

    from smallfirst.service.distill.base_weights import load_float_model

    if not rows:
        raise ValueError("no training examples")
    if config.threads:
        torch.set_num_threads(config.threads)
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    model, weights = load_float_model(model_path)
    load_seconds = time.perf_counter() - started
    torch.manual_seed(config.seed)  # after loading, which may or may not draw from the generator
    lora_config = LoraConfig(
        r=config.rank, lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft scales by alpha / r: a float is fine
        target_modules=list(TARGET_MODULES), lora_dropout=0.0,
        bias="none", task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft asks transformers about a renamed attribute
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model, lora_config)
    model.train()
    base = model.get_base_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    batches = _batches(rows, config)
    first_loss = last_loss = math.nan
    started = time.perf_counter()
    for step, batch in enumerate(batches, 1):
        loss = _answer_loss(base, *_tensors(batch, pad_id))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = float(loss.detach())
        if step == 1:
            first_loss = last_loss
        if progress is not None:
            progress(step, len(batches), last_loss)
    seconds = time.perf_counter() - started
    lora = {name: value.detach().cpu().numpy() for name, value in model.state_dict().items() if ".lora_" in name}
    return TrainResult(lora, len(batches), seconds, load_seconds, weights, first_loss, last_loss)
