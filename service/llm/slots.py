"""One llama.cpp context that holds several independent token sequences ("slots").

Autocomplete keeps one slot per typist (and a standby slot while new grounding is being
prefilled), so typists never evict each other's KV prefix, and one ``decode`` call advances
several of them at once: on the 2-core reference machine a step over four sequences costs
about 47 ms instead of four 20 ms steps. Only the thread that created this object (the
scheduler's) calls into it, tokenizing included; with thread checks on, any other caller fails.
"""

from __future__ import annotations

import bisect
import ctypes
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from smallfirst.errors import ConfigError, UpstreamError
from smallfirst.threads import OwnerThread

COPY_GAIN = 8  # tokens a prefix copy from another slot must save over the slot's own prefix
HEALING_CACHE = 256  # allowed-token sets kept for recent healed texts


@dataclass
class Row:
    """Tokens to append to one slot in a step; ``sample`` asks for the next token after them,
    chosen among ``allowed`` token ids when given (token healing); ``keep``: the slot keeps the
    next-token scores after them, so that a later prompt ending there needs no step."""

    slot: int
    tokens: list[int]
    sample: bool
    allowed: np.ndarray | None = None
    keep: bool = False


class PrefixIndex:
    """The vocabulary's token texts, sorted once, to find which tokens may follow a prompt that
    was backed off to a token boundary (token healing): those whose text starts with the text
    taken off, and the first of its own tokens (healed over several tokens)."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        ids = sorted((token for token, piece in enumerate(pieces) if piece), key=pieces.__getitem__)
        self._pieces = [pieces[token] for token in ids]
        self._ids = np.array(ids, dtype=np.int64)
        self._texts = list(pieces)  # by token id
        self._cache: OrderedDict[tuple[bytes, int | None], np.ndarray] = OrderedDict()

    def allowed(self, heal: bytes, start: int | None = None) -> np.ndarray:
        """Token ids that may spell out ``heal``: those whose text starts with it (but not a bare
        space or line break itself, which the tokenizer never leaves before a word), and
        ``start``, when given and its text is a start of ``heal``: the first token of ``heal``'s
        own tokenization. No other start of it, so a word is never spelled in pieces the
        tokenizer would not cut (a lone space, then the word without its space)."""
        key = (heal, start)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        lo = (bisect.bisect_right if heal[-1:].isspace() else bisect.bisect_left)(self._pieces, heal)
        hi = bisect.bisect_left(self._pieces, _successor(heal)) if heal.rstrip(b"\xff") else len(self._pieces)
        found = self._ids[lo:hi]
        if start is not None and 0 <= start < len(self._texts):
            first = self._texts[start]
            if first and len(first) < len(heal) and heal.startswith(first):
                found = np.append(found, start)
        self._cache[key] = found
        while len(self._cache) > HEALING_CACHE:
            self._cache.popitem(last=False)
        return found

    def extends(self, text: bytes) -> bool:
        """Whether some token's text starts with ``text`` and goes on past it."""
        lo = bisect.bisect_right(self._pieces, text)
        return lo < len(self._pieces) and self._pieces[lo].startswith(text)


def _successor(prefix: bytes) -> bytes:
    """The least byte string greater than every string that starts with ``prefix`` (whose bytes
    are not all 0xff)."""
    stem = prefix.rstrip(b"\xff")
    return stem[:-1] + bytes([stem[-1] + 1])


class SlotContext:
    """A unified KV cache shared by ``n_slots`` sequences of up to ``slot_ctx`` tokens each."""

    def __init__(self, model_path: Path, n_slots: int, slot_ctx: int, threads: int, batch_tokens: int = 64,
                 lora_path: Path | None = None) -> None:
        from llama_cpp import _internals, _logger
        from llama_cpp import llama_cpp as lib

        self._owner = OwnerThread("SlotContext")
        if not model_path.is_file():
            raise ConfigError(f"model file not found: {model_path}")
        _logger.set_verbose(False)
        self._lib = lib
        try:
            self._model = _internals.LlamaModel(
                path_model=str(model_path), params=lib.llama_model_default_params(), verbose=False,
            )
            params = lib.llama_context_default_params()
            params.n_ctx = n_slots * slot_ctx
            params.n_batch = params.n_ubatch = batch_tokens
            params.n_seq_max = n_slots
            params.kv_unified = True  # slots share cells, so a prefix can be copied between them
            params.swa_full = True  # Gemma 3's sliding-window cache must allow rolling a sequence back
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
            params.n_threads = params.n_threads_batch = threads or os.cpu_count() or 1
            self._context = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot load the model {model_path}: {exc}") from exc
        self._adapter = None
        if lora_path is not None:
            self._set_adapter(lora_path)
        self._memory = lib.llama_get_memory(self._context.ctx)
        self._batch = lib.llama_batch_init(batch_tokens, 0, 1)
        self._vocab = self._model.vocab
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self.n_slots = n_slots
        self.slot_ctx = slot_ctx
        self.batch_tokens = batch_tokens
        self.tokens: list[list[int]] = [[] for _ in range(n_slots)]
        # Per slot: the next-token scores after its first ``n`` tokens, (n, scores), while it still holds them.
        self._kept: list[tuple[int, np.ndarray] | None] = [None] * n_slots
        self.evaluated = 0  # tokens run through the model, all slots together
        # End-of-text and control tokens have no text here, so healing never picks them.
        self.prefixes = PrefixIndex(self._pieces())

    def _set_adapter(self, lora_path: Path) -> None:
        """Apply a LoRA adapter (scale 1) to every slot's computation."""
        lib = self._lib
        self._adapter = lib.llama_adapter_lora_init(self._model.model, str(lora_path).encode("utf-8"))
        if not self._adapter:
            self._adapter = None
            raise ConfigError(f"cannot load the adapter {lora_path.name} for autocomplete")
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._adapter)
        scales = (ctypes.c_float * 1)(1.0)
        if lib.llama_set_adapters_lora(self._context.ctx, adapters, 1, scales):
            raise ConfigError(f"cannot apply the adapter {lora_path.name} for autocomplete")

    def close(self) -> None:
        self._owner.check("close")
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._context.close()  # type: ignore[no-untyped-call]
        if self._adapter is not None:
            self._lib.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        self._model.close()  # type: ignore[no-untyped-call]

    # Vocabulary ------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        self._owner.check("tokenize")
        if not text:
            return [self._lib.llama_vocab_bos(self._vocab)] if add_bos else []
        return list(self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False))

    def _pieces(self) -> list[bytes]:
        """Every token's text, as :meth:`piece` gives it (end-of-text tokens: none), in one pass
        over the vocabulary with one buffer (262k tokens for Gemma 3: a second saved at start)."""
        lib, vocab = self._lib, self._vocab
        buf = ctypes.create_string_buffer(32)
        pieces = []
        for token in range(self.n_vocab):
            n = 0 if lib.llama_vocab_is_eog(vocab, token) else lib.llama_token_to_piece(vocab, token, buf, 32, 0, False)
            pieces.append(buf.raw[:n].rstrip(b"\0") if n > 0 else b"")
        return pieces

    def piece(self, token: int) -> bytes:
        self._owner.check("piece")
        return self._model.token_to_piece(token).rstrip(b"\0")

    def text(self, tokens: Sequence[int]) -> str:
        self._owner.check("text")
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="ignore")

    def is_end(self, token: int) -> bool:
        self._owner.check("is_end")
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    # KV bookkeeping (scheduler thread) -------------------------------------------------

    def truncate(self, slot: int, keep: int) -> None:
        """Drop everything in ``slot`` from position ``keep`` on."""
        self._owner.check("truncate")
        if keep < len(self.tokens[slot]):
            if not self._lib.llama_memory_seq_rm(self._memory, slot, keep, -1):
                self.clear(slot)  # the cache cannot roll back partway (a sliding window): start over
                return
            del self.tokens[slot][keep:]
            kept = self._kept[slot]
            if kept is not None and kept[0] > keep:
                self._kept[slot] = None

    def kept_scores(self, slot: int, target: Sequence[int]) -> bool:
        """Whether ``slot`` holds all of ``target`` and kept the next-token scores after it."""
        kept = self._kept[slot]
        return (kept is not None and kept[0] == len(target) and len(self.tokens[slot]) >= len(target)
                and common_prefix(self.tokens[slot], target) == len(target))

    def sample_kept(self, slot: int, allowed: np.ndarray | None) -> int:
        """The greedy next token from the scores ``slot`` kept (see :meth:`kept_scores`), with no step."""
        self._owner.check("sample_kept")
        kept = self._kept[slot]
        assert kept is not None
        return _greedy(kept[1], allowed)

    def adopt(self, slot: int, target: Sequence[int], candidates: Sequence[int] = ()) -> int:
        """Make ``slot`` hold the longest prefix of ``target`` it (or, copied over, one of
        ``candidates``) already has, always leaving the last target token to evaluate.
        Returns how many target tokens are now in the slot's KV cache."""
        self._owner.check("adopt")
        if self.kept_scores(slot, target):  # the prompt's next-token scores are at hand: nothing to evaluate
            self.truncate(slot, len(target))
            return len(target)
        limit = len(target) - 1
        own = min(common_prefix(self.tokens[slot], target), limit)
        best, source = own, slot
        if limit - own <= COPY_GAIN:  # the usual keystroke: no copy could save a step
            candidates = ()
        for other in candidates:
            if other != slot:
                shared = min(common_prefix(self.tokens[other], target), limit)
                if shared > best + COPY_GAIN:  # a copy pays only when it saves a real prefill
                    best, source = shared, other
        if source == slot:
            self.truncate(slot, own)
            return len(self.tokens[slot])
        self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self._lib.llama_memory_seq_cp(self._memory, source, slot, 0, best)
        self.tokens[slot] = list(self.tokens[source][:best])
        self._kept[slot] = None
        return best

    def clear(self, slot: int) -> None:
        self._owner.check("clear")
        self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
        self.tokens[slot] = []
        self._kept[slot] = None

    # The step ------------------------------------------------------------------------------

    def decode(self, rows: Sequence[Row]) -> list[int | None]:
        """Append each row's tokens to its slot in one llama.cpp call; the greedy next token for
        rows that asked for one (None for the others)."""
        self._owner.check("decode")
        lib, batch = self._lib, self._batch
        n = 0
        outputs: list[int | None] = []
        for row in rows:
            start = len(self.tokens[row.slot])
            if start + len(row.tokens) > self.slot_ctx:
                raise UpstreamError("an autocomplete slot is full")
            for j, token in enumerate(row.tokens):
                batch.token[n] = token
                batch.pos[n] = start + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = row.slot
                batch.logits[n] = row.sample and j == len(row.tokens) - 1
                n += 1
            outputs.append(n - 1 if row.sample else None)
        if n == 0:
            return [None] * len(rows)
        if n > self.batch_tokens:
            raise UpstreamError(f"an autocomplete step of {n} tokens exceeds the batch of {self.batch_tokens}")
        batch.n_tokens = n
        code = lib.llama_decode(self._context.ctx, batch)
        if code != 0:
            for row in rows:  # the cache state of these slots is unknown now: start them over
                self.clear(row.slot)
            raise UpstreamError(f"the autocomplete model failed a step (llama_decode returned {code})")
        self.evaluated += n
        for row in rows:
            self.tokens[row.slot].extend(row.tokens)
        sampled: list[int | None] = []
        for row, index in zip(rows, outputs):
            if index is None:
                sampled.append(None)
                continue
            logits = lib.llama_get_logits_ith(self._context.ctx, index)
            values = np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
            if row.keep:
                self._kept[row.slot] = (len(self.tokens[row.slot]), values.copy())
            sampled.append(_greedy(values, row.allowed))
        return sampled


def _greedy(scores: np.ndarray, allowed: np.ndarray | None) -> int:
    """The best-scoring token, among ``allowed`` when given and not empty."""
    if allowed is not None and len(allowed):
        return int(allowed[int(scores[allowed].argmax())])
    return int(scores.argmax())


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

