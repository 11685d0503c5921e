"""The served GGUF's weights as float32 safetensors, made once per model file and machine.

transformers can read a GGUF itself, but it parses the file's metadata (the 262k-entry
vocabulary) field by field, twice: about a minute for Gemma 3 270M. The dequantised weights it
arrives at are written once under ``~/.cache/smallfirst/distill`` (about 1 GB) and every later
run loads them in seconds: the same numbers, so the adapter is still trained on the weights
llama.cpp serves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from smallfirst.cache import built_once, cache_root, files_key

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = 1  # bump when the recipe below changes: older copies are then made anew
WEIGHTS_FILE = "model.safetensors"
DONE_FILE = "source.json"


def _from_gguf(model_path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32, attn_implementation="eager",
    )


def _write(model: Any, model_path: Path, folder: Path) -> None:
    """The model's config (less the GGUF quantization note) and weights, then the marker."""
    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the copy is plain float32
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    save_model(model, str(folder / WEIGHTS_FILE))  # tied embeddings are written once
    (folder / DONE_FILE).write_text(json.dumps({"gguf": model_path.name, "bytes": model_path.stat().st_size}))


def load_float_model(model_path: Path, cache: Path | None = None) -> tuple[Any, str]:
    """The model at ``model_path`` as a float32 transformers model, and where it came from:
    ``"cache"`` (the copy made by an earlier run) or ``"gguf"``. A cache that cannot be written
    costs time, not the run: the GGUF is read as is."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    key = files_key([(model_path.name, model_path)], f"format {WEIGHTS_FORMAT} transformers {transformers.__version__}")
    target = (cache or cache_root("distill")) / key
    if not (target / DONE_FILE).is_file():
        made: list[Any] = []

        def build(scratch: Path) -> None:
            log.info("reading %s into float32 weights, once, in %s", model_path.name, target)
            made.append(_from_gguf(model_path))
            _write(made[0], model_path, scratch)

        try:
            built_once(target, DONE_FILE, build)
        except OSError as exc:
            log.warning("cannot keep the float32 weights under %s (%s); each run reads the GGUF", target.parent, exc)
            return (made[0] if made else _from_gguf(model_path)), "gguf"
        if made:  # built here: already in memory
            return made[0], "gguf"
    return AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32, attn_implementation="eager"), "cache"
