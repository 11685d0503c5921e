"""Option scoring on a llama.cpp context: how likely the model finds each of a few short
continuations of one prompt, teacher-forced. The options go side by side, each in a sequence of
its own that shares the prompt's cells (the KV cache is unified, so sharing copies nothing), and
their tokens go in one batch per step rather than one decode per token.

Every function here but :func:`layout` touches the context: call them on the thread that owns it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from smallfirst.errors import UpstreamError

OPTION_TOKENS = 24  # an option is scored on this many tokens at most
OPTION_SEQUENCES = 8  # options scored side by side, each in a sequence of its own beside the prompt's

Row = tuple[int, int, int, int]  # (sequence, position, token, the token after it)


def next_logprobs(llama: Any, row: int = -1) -> np.ndarray:
    """Log-probabilities of the next token after a row of the last decode (the last by default)."""
    from llama_cpp import llama_cpp as lib

    logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(llama._ctx.ctx, row), shape=(llama.n_vocab(),))
    top = float(logits.max())
    return logits - top - float(np.log(np.exp(logits - top).sum()))


def option_tokens(llama: Any, options: Sequence[str]) -> list[list[int]]:
    """Each option's tokens as they would follow the prompt (at most ``OPTION_TOKENS``)."""
    tokenize = llama.tokenize
    return [tokenize((" " + option).encode("utf-8"), add_bos=False, special=False)[:OPTION_TOKENS] or [0]
            for option in options]


def layout(ids: Sequence[Sequence[int]], members: Sequence[int], prompt_length: int) -> tuple[list[Row], list[int]]:
    """The batch rows scoring the options ``members`` (indexes into ``ids``), the k-th in sequence
    k + 1 after the prompt, and which option each row belongs to. An option's first token is
    scored by the prompt's own last logits, so it needs no row."""
    rows = [(1 + k, prompt_length + j, ids[i][j], ids[i][j + 1])
            for k, i in enumerate(members) for j in range(len(ids[i]) - 1)]
    return rows, [members[row[0] - 1] for row in rows]


def fork(llama: Any, prompt_length: int, count: int) -> None:
    """Give sequences 1..``count`` the prompt's cells."""
    from llama_cpp import llama_cpp as lib

    memory = lib.llama_get_memory(llama._ctx.ctx)
    for sequence in range(1, count + 1):
        lib.llama_memory_seq_rm(memory, sequence, -1, -1)
        lib.llama_memory_seq_cp(memory, 0, sequence, 0, prompt_length)


def unfork(llama: Any, count: int) -> None:
    """Drop sequences 1..``count``; the prompt's cells stay with sequence 0."""
    from llama_cpp import llama_cpp as lib

    memory = lib.llama_get_memory(llama._ctx.ctx)
    for sequence in range(1, count + 1):
        lib.llama_memory_seq_rm(memory, sequence, -1, -1)


def score_rows(llama: Any, rows: Sequence[Row], model_name: str) -> list[float]:
    """One decode of option tokens, each row in its option's own sequence; the log-probability of
    each row's next token."""
    from llama_cpp import llama_cpp as lib

    batch = lib.llama_batch_init(len(rows), 0, 1)
    try:
        for i, (sequence, position, token, _) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = sequence
            batch.logits[i] = True
        batch.n_tokens = len(rows)
        code = lib.llama_decode(llama._ctx.ctx, batch)
        if code != 0:
            raise UpstreamError(f"the {model_name} model failed to score options (llama_decode returned {code})")
        return [float(next_logprobs(llama, i)[target]) for i, (_, _, _, target) in enumerate(rows)]
    finally:
        lib.llama_batch_free(batch)


