"""Write a peft LoRA as llama.cpp's adapter GGUF (``general.type = adapter``).

llama.cpp names an adapter's tensors after the base tensor they modify, with ``.lora_a`` and
``.lora_b`` appended, and scales them by ``adapter.lora.alpha / rank`` (peft's own scaling).
``lora_a`` holds peft's ``lora_A`` (rank × inputs), ``lora_b`` peft's ``lora_B`` (outputs × rank).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

# Hugging Face module names of the attention projections -> llama.cpp tensor names.
_PROJECTIONS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
_PEFT_NAME = re.compile(r"layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\.lora_([AB])(?:\.\w+)?\.weight$")


def base_architecture(model_path: Path) -> str:
    """The ``general.architecture`` of a GGUF model, which an adapter must repeat."""
    from gguf import GGUFReader

    field = GGUFReader(str(model_path)).get_field("general.architecture")
    if field is None:
        raise ValueError(f"{model_path} names no architecture")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def gguf_tensors(lora: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """peft state-dict entries -> llama.cpp adapter tensors (float32); other entries are refused."""
    out: dict[str, np.ndarray] = {}
    for name, value in lora.items():
        match = _PEFT_NAME.search(name)
        if match is None:
            raise ValueError(f"no llama.cpp tensor for the LoRA weight {name}")
        layer, module, side = match.groups()
        out[f"blk.{layer}.{_PROJECTIONS[module]}.weight.lora_{side.lower()}"] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def write_adapter(lora: Mapping[str, np.ndarray], alpha: float, model_path: Path, out: Path) -> int:
    """Write the adapter GGUF for the base model at ``model_path``; returns its size in bytes."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(out), base_architecture(model_path))
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    for name, tensor in sorted(gguf_tensors(lora).items()):
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out.stat().st_size
