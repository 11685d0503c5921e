"""An int8 ONNX copy of the embedding model, made locally from its own weights and cached.

The export runs once per model folder and machine (at install, or at the first start that needs
it): torch traces the transformer, onnxruntime quantizes its matrix products to int8 weights,
and the result lands in a cache folder under a key of the model's files. Nothing is downloaded.
Only this module imports torch; serving the int8 model needs onnxruntime alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from smallfirst.cache import built_once, cache_root, files_key
from smallfirst.errors import ConfigError

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the export recipe changes: older caches are then made anew
INT8_FILE = "model_qint8.onnx"
META_FILE = "export.json"
OPSET = 17


def default_cache_root() -> Path:
    return cache_root("embedder")


def model_key(model_dir: Path) -> str:
    """A key that changes whenever the model's files or the export recipe do."""
    files = [(str(p.relative_to(model_dir)), p) for p in sorted(p for p in model_dir.rglob("*") if p.is_file())]
    return files_key(files, f"format {EXPORT_FORMAT}")


def int8_model(model_dir: Path, cache_root: Path | None = None) -> Path:
    """The folder holding the int8 export of ``model_dir``, made first when missing (once per
    machine, under a lock; see :mod:`smallfirst.cache`)."""
    root = cache_root or default_cache_root()
    target = root / model_key(model_dir)

    def build(scratch: Path) -> None:
        log.info("making the int8 ONNX copy of the embedding model in %s (once)", target)
        _export(model_dir, scratch)

    try:
        return built_once(target, META_FILE, build)
    except OSError as exc:
        raise ConfigError(f"cannot write the int8 embedding model under {root}: {exc}; set SMALLFIRST_EMBED_CACHE_DIR "
                          "to a writable folder, or SMALLFIRST_EMBED_BACKEND=torch") from exc


def _export(model_dir: Path, out: Path) -> None:
    """Trace the transformer to ONNX (float), then quantize its MatMul weights to int8."""
    try:
        import torch
        import transformers
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ConfigError(f"making the int8 embedding model needs torch, transformers and onnxruntime: {exc}") from exc

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    model.eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    example = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "last_hidden_state": {0: "batch", 1: "tokens"}}
    float_file = out / "model_float.onnx"
    with torch.no_grad():
        torch.onnx.export(LastHiddenState(model), example, str(float_file), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    fused = _fuse_bert(float_file, model.config)
    import onnx

    graph = onnx.load(str(fused)).graph
    # Each layer's feed-forward output projection takes the widest activations and is the one most
    # hurt by int8: kept in float, every vector stays within cosine 0.99 of the float model's.
    keep_float = [n.name for n in graph.node if n.op_type == "MatMul" and n.name.endswith("/output/dense/MatMul")
                  and "attention" not in n.name]
    quantize_dynamic(str(fused), str(out / INT8_FILE), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=keep_float, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    for leftover in out.glob("*.onnx"):
        if leftover.name != INT8_FILE:
            leftover.unlink()
    (out / META_FILE).write_text(json.dumps({
        "format": EXPORT_FORMAT, "source": str(model_dir), "opset": OPSET, "fused": fused != float_file,
        "weights": "int8 per channel", "float_nodes": keep_float}))


def _fuse_bert(float_file: Path, config: object) -> Path:
    """onnxruntime's BERT graph fusions (attention, layer norms, GELU) for a BERT model; else the file as is."""
    if getattr(config, "model_type", "") != "bert":
        return float_file
    from onnxruntime.transformers.optimizer import optimize_model

    fused_file = float_file.with_name("model_fused.onnx")
    optimized = optimize_model(str(float_file), model_type="bert", num_heads=int(getattr(config, "num_attention_heads")),
                               hidden_size=int(getattr(config, "hidden_size")))
    optimized.save_model_to_file(str(fused_file))
    return fused_file


def main(argv: list[str] | None = None) -> int:
    """``python -m smallfirst.retrieval.onnx_export``: make the int8 copy now (at install or image build)."""
    import argparse

    from smallfirst.retrieval.embedder import bundled_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Model folder (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--cache-dir", type=Path, help="Cache folder (default: SMALLFIRST_EMBED_CACHE_DIR, else the user cache).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    env_dir = os.environ.get("SMALLFIRST_EMBED_CACHE_DIR")
    folder = int8_model(args.model or bundled_model_dir(), args.cache_dir or (Path(env_dir) if env_dir else None))
    print(folder / INT8_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
